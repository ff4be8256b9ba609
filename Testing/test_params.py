"""Parameter declarations (SodiumDIPLib.params): every preset name declared, values converted and range-checked
once, bad values refused with the parameter's name, one JSON description for the GUIs."""

import json
import math

import pytest

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.methods import get_method, list_methods
from SodiumDIPLib.params import PARAMETERS, Param, register, spec


@pytest.mark.parametrize("method", [m.name for m in list_methods()])
def test_every_preset_value_is_declared_and_inside_its_range(method):
    m = {x.name: x for x in list_methods()}[method]
    for preset, values in m.presets.items():
        checked = m.parameters(preset)
        for name, value in values.items():
            assert spec(method, name) is not None, f"{method}.{name} has no declaration"
            assert checked[name] == value  # validation converts, it never changes a preset's value


@pytest.mark.parametrize("name, bad", [
    ("lr", "nan"), ("lr", "1e400"), ("lr", float("inf")), ("lr", None), ("lr", True), ("lr", 0.0), ("lr", "fast"),
    ("iterations", 2.5), ("iterations", "10" * 13), ("iterations", 0), ("gamma", 1.0), ("gamma", -0.1),
    ("stopping", "sometimes"), ("stopping", 3), ("residual", "maybe"), ("channels", "16,-4"), ("channels", ""),
    ("ema", 1.0),
])
def test_bad_values_are_refused_naming_the_parameter(name, bad):
    with pytest.raises(InputError, match=f"parameter '{name}' expects"):
        get_method("dipfusion").parameters("fast", {name: bad})


def test_cli_strings_are_converted_to_the_declared_type():
    p = get_method("dipfusion").parameters("fast", {"lr": " 0.002", "iterations": "50", "residual": "off",
                                                     "channels": "8, 16", "stopping": "wmv", "gamma": 0})
    assert p["lr"] == 0.002 and p["iterations"] == 50 and p["residual"] is False
    assert p["channels"] == "8,16" and p["stopping"] == "wmv" and isinstance(p["gamma"], float)


def test_unknown_names_and_presets_are_input_errors():
    with pytest.raises(InputError, match="unknown parameter 'learning_rate'"):
        get_method("tv").parameters("fast", {"learning_rate": 0.1})
    with pytest.raises(InputError, match="unknown preset"):
        get_method("tv").parameters("slow")


def test_bounds_are_inclusive_unless_declared_open():
    tv = get_method("tv")
    assert tv.parameters("fast", {"bregman_steps": 10})["bregman_steps"] == 10
    with pytest.raises(InputError, match="<= 10"):
        tv.parameters("fast", {"bregman_steps": 11})
    with pytest.raises(InputError, match="> 0"):
        tv.parameters("fast", {"bregman_weight_factor": 0})


def test_describe_is_json_and_matches_the_presets():
    for m in list_methods():
        record = json.loads(json.dumps(m.describe(), allow_nan=False))
        names = [p["name"] for p in record["parameters"]]
        assert names == list(m.presets["balanced"])
        for p in record["parameters"]:
            assert p["type"] in ("float", "int", "bool", "choice", "text") and p["doc"]
            if p["choices"]:
                assert p["default"] in p["choices"]
            if p["type"] in ("float", "int"):
                assert p["min"] is None or p["default"] >= p["min"]
                assert p["max"] is None or p["default"] <= p["max"]
                assert math.isfinite(p["default"])


def test_a_name_is_declared_once():
    with pytest.raises(ValueError, match="already declared"):
        register(Param("lr", "float", "again"))
    assert PARAMETERS["lr"].kind == "float"


def test_cli_help_prints_the_declarations(capsys):
    from SodiumDIPLib.apps.cli import main

    assert main(["methods", "--parameters", "dipfusion"]) == 0
    out = capsys.readouterr().out
    assert "holdout_fraction: a finite number >= 0 and <= 0.5" in out
    assert "stopping: one of 'fixed', 'wmv', 'discrepancy'" in out
    assert main(["methods", "--parameters", "nonsense"]) == 2
