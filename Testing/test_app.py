"""The browser app's logic without a browser: the parameter form (from the engine's declarations) and the
scene session (files of the data folder only, a real worker run, saving that never overwrites).

Needs slicer-core (test extras) but not trame: ``SodiumDIPLib.apps.web.session`` and ``.parameters`` import no UI.
"""

import time

import numpy as np
import pytest

from SodiumDIPLib.errors import InputError

pytest.importorskip("slicer", reason="slicer-core (test extras) provides the MRML scene")


@pytest.fixture(scope="module")
def methods():
    from SodiumDIPLib.apps.jobs import describe_methods

    return describe_methods()


# --- parameters ------------------------------------------------------------------------------------------

def test_every_declared_parameter_is_a_field(methods):
    from SodiumDIPLib.apps.web import parameters

    for name, method in methods.items():
        fields = parameters.form_fields(method)
        assert [f["name"] for f in fields] == [d["name"] for d in method["parameters"]], name
        for f in fields:
            assert f["type"] in ("float", "int", "bool", "choice", "text")
            assert (f["choices"] is not None) == (f["type"] == "choice")


def test_overrides_keep_changed_values_converted_and_checked(methods):
    from SodiumDIPLib.apps.web import parameters

    tv = methods["tv"]
    form = parameters.form_values(tv, "fast")
    assert parameters.overrides(tv, "fast", form) == {}  # the preset as shown is no override
    form.update(lambda_sigma="1.5", lambda_select="fixed", nonneg=False, iterations="30")
    assert parameters.overrides(tv, "fast", form) == {"lambda_sigma": 1.5, "lambda_select": "fixed",
                                                        "nonneg": False, "iterations": 30}
    for bad, word in (("-1", ">= 0"), ("abc", "finite number"), ("", "empty"), ("nan", "finite number")):
        with pytest.raises(InputError, match=f"lambda_sigma.*{word}|{word}.*lambda_sigma"):
            parameters.overrides(tv, "fast", dict(form, lambda_sigma=bad))
    with pytest.raises(InputError, match="lambda_select"):
        parameters.overrides(tv, "fast", dict(form, lambda_select="bogus"))
    with pytest.raises(InputError, match="iterations"):
        parameters.overrides(tv, "fast", dict(form, iterations="2.5"))
    with pytest.raises(InputError, match="no preset 'turbo'"):
        parameters.overrides(tv, "turbo", form)


def test_fields_come_from_the_presets_without_declarations(methods):
    from SodiumDIPLib.apps.web import parameters

    old = {k: v for k, v in methods["dipfusion"].items() if k != "parameters"}  # an older worker's answer
    fields = {f["name"]: f for f in parameters.form_fields(old)}
    assert set(fields) == set(old["presets"]["balanced"])
    assert fields["iterations"]["type"] == "int" and fields["residual"]["type"] == "bool"
    assert parameters.overrides(old, "fast", {"iterations": "7"}) == {"iterations": 7}


# --- session ---------------------------------------------------------------------------------------------

@pytest.fixture()
def session(tmp_path, methods):
    import slicer

    from SodiumDIPLib.apps.web.session import Session
    from SodiumDIPLib.data.io import write_volume
    from SodiumDIPLib.data.phantom import make_phantom

    case = make_phantom(shape=(12, 12, 12), seed=2)
    write_volume(case.sodium, tmp_path / "na.nii.gz")
    write_volume(case.proton, tmp_path / "h.nrrd")
    (tmp_path / "sub").mkdir()
    write_volume(case.sodium_truth, tmp_path / "sub" / "truth.mha")
    (tmp_path / "notes.txt").write_text("not a volume")
    s = Session(slicer.vtkMRMLScene(), tmp_path, methods, snapshot_interval_s=0.2)
    yield s
    s.shutdown()


def test_picker_offers_volumes_of_the_folder_only(session, tmp_path):
    assert session.data_files() == ["h.nrrd", "na.nii.gz", "sub/truth.mha"]
    for bad in ("../na.nii.gz", str(tmp_path.parent / "x.nrrd"), "missing.nrrd", ""):
        with pytest.raises(InputError):
            session.resolve(bad)


def test_run_and_save_never_overwrite(session, tmp_path):
    import slicer

    na_bytes = (tmp_path / "na.nii.gz").read_bytes()
    session.load_file("sodium", "na.nii.gz")
    session.load_file("proton", "h.nrrd")
    with pytest.raises(InputError, match="lambda_sigma.*>= 0"):  # a bad parameter is refused before any worker starts
        session.start("tv", "fast", {"lambda_sigma": "-2"})
    assert session.history == []
    entry = session.start("tv", "fast", {"iterations": "20"})
    with pytest.raises(InputError, match="in progress"):
        session.start("tv", "fast", {})
    deadline = time.monotonic() + 120
    while session.running and time.monotonic() < deadline:
        session.poll()
        time.sleep(0.05)
    assert entry.run.state == "finished", entry.run.error
    assert entry.params == {"iterations": 20} and entry.record["params"]["iterations"] == 20
    output = entry.nodes["output"]
    assert slicer.util.arrayFromVolume(output).shape == (12, 12, 12)
    assert session.scene.GetNodeByID(output.GetID()) is not None
    first = session.save(entry.number, "na")  # an input's name: must become another one
    second = session.save(entry.number, "na.nii.gz")
    assert [p.rsplit("/", 1)[-1] for p in first] == ["na_1.nii.gz", "na_1_bias_field.nii.gz", "na_1.json"]
    assert [p.rsplit("/", 1)[-1] for p in second] == ["na_2.nii.gz", "na_2_bias_field.nii.gz", "na_2.json"]
    assert (tmp_path / "na.nii.gz").read_bytes() == na_bytes
    from SodiumDIPLib.data.io import read_volume

    saved = read_volume(tmp_path / "na_1.nii.gz", "saved")
    assert np.allclose(saved.array, slicer.util.arrayFromVolume(output), atol=1e-5)
    with pytest.raises(InputError, match="usable"):
        session.save(entry.number, "../..")


def test_start_names_missing_inputs(session):
    with pytest.raises(InputError, match="no sodium volume"):
        session.start("tv", "fast")
    session.load_file("sodium", "na.nii.gz")
    with pytest.raises(InputError, match="needs a proton"):
        session.start("dipfusion", "fast")
    with pytest.raises(InputError, match="unknown method"):
        session.start("nope", "fast")


def test_command_line_errors_exit_2(tmp_path, capsys):
    from SodiumDIPLib.apps.cli import main

    assert main(["app", "--data", str(tmp_path / "missing")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["app", "--data", str(tmp_path), "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert main(["app", "--data", str(tmp_path), "--phantom-shape", "4"]) == 2
