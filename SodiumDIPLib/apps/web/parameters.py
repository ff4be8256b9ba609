"""The panel's parameter fields, built from the engine's parameter description (one source of truth).

``jobs.describe_methods()`` (the worker's ``--describe``) gives, per method, its presets and a list of
parameter declarations {name, type, default, min, max, min_exclusive, choices, unit, doc, group, format}.
This module turns them into form fields and turns the form's values (strings from the browser) back into
engine overrides: converted and range-checked by ``SodiumDIPLib.params.Param`` (the declaration type the
engine validates with), so a bad value is an InputError naming the parameter before any worker starts.
Older workers without "parameters" get fields derived from the presets (type from the Python value).
"""

from __future__ import annotations

import math
from typing import Any

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.params import Param, undeclared


def declarations(method: dict) -> list:
    """The method's parameter declarations; derived from its presets when the worker gives none."""
    if method.get("parameters"):
        return list(method["parameters"])
    presets = method.get("presets") or {}
    values = presets.get("balanced") or next(iter(presets.values()), {})
    return [undeclared(name, value, "parameters").describe(value) for name, value in values.items()]


def to_param(decl: dict) -> Param:
    """A declaration dict as the engine's ``Param`` (comma-separated integer text reads as "intlist")."""
    kind = "intlist" if decl.get("format") == "comma-separated integers" else decl["type"]
    choices = tuple(decl["choices"]) if decl.get("choices") else None
    return Param(decl["name"], kind, decl.get("doc") or "", decl.get("group") or "parameters",
                 decl.get("unit") or "", decl.get("min"), decl.get("max"), bool(decl.get("min_exclusive")), choices)


def preset_values(method: dict, preset: str) -> dict:
    """Field name -> value a preset gives (declared default where the preset does not name it)."""
    presets = method.get("presets") or {}
    if preset not in presets:
        raise InputError(f"method {method.get('name')!r} has no preset {preset!r}; expected one of "
                         f"{', '.join(presets) or '(none)'}")
    values = presets[preset]
    return {d["name"]: values.get(d["name"], d.get("default")) for d in declarations(method)}


def form_fields(method: dict) -> list:
    """JSON-ready field descriptions for the browser form, grouped in declaration order.

    Each: {name, type, label, hint, choices, group}; ``hint`` states unit, range and doc."""
    fields = []
    for decl in declarations(method):
        param = to_param(decl)
        unit = f" [{decl['unit']}]" if decl.get("unit") else ""
        hint = "; ".join(s for s in (decl.get("doc") or "", param.expects()) if s)
        fields.append({"name": decl["name"], "type": decl["type"], "label": decl["name"] + unit, "hint": hint,
                       "choices": list(decl["choices"]) if decl.get("choices") else None,
                       "group": decl.get("group") or "parameters"})
    return fields


def overrides(method: dict, preset: str, form: dict) -> dict:
    """Engine overrides from the form: every field converted and checked, kept where it differs from the preset.

    ``form``: field name -> value as the browser holds it (strings for numbers and text, bools for
    check boxes). Raises InputError naming the first bad field and what it expects."""
    base = preset_values(method, preset)
    out = {}
    for decl in declarations(method):
        name = decl["name"]
        if name not in form or form[name] is None:
            continue
        value = form[name]
        if isinstance(value, str) and value.strip() == "" and decl["type"] in ("float", "int"):
            raise InputError(f"parameter {name!r} is empty; expected {to_param(decl).expects()}")
        checked = to_param(decl).coerce(value)
        if not _same(checked, base.get(name)):
            out[name] = checked
    return out


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def form_values(method: dict, preset: str) -> dict:
    """Field name -> the value the browser form shows for a preset (numbers as text, bools as bools)."""
    out = {}
    for name, value in preset_values(method, preset).items():
        out[name] = value if isinstance(value, bool) or value is None else (
            f"{value:g}" if isinstance(value, float) else str(value))
    return out
