"""What a report shows, gathered from one or more runs onto one display grid (shared by figures and HTML).

A run is a ``pipeline.RunOutput`` (or anything with the same attributes). The display grid is the first
run's output grid; any volume on another grid (a coarse sodium input beside an upsampled result) is put on
it by nearest-neighbour resampling through the physical geometry, so blocky stays blocky and every panel
of a row shows the same place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.volume import Volume, as_3d
from SodiumDIPLib.apps.report.views import available_planes, mask_centroid_index, point_to_index

#: Scalar extras whose name contains one of these are pilot estimates (shown beside the input).
PILOT_WORDS = ("pilot",)


@dataclass
class Panel:
    """One image to show: ``array`` [k, j, i] on the display grid; ``kind`` selects window and colours."""

    key: str
    title: str
    kind: str  # "intensity" | "proton" | "error" | "bias" | "magnitude" | "scalar"
    array: np.ndarray
    run: Optional[int] = None


@dataclass
class FieldPanel:
    """A direction field: magnitude (grey) and RGB = |RAS components| (k, j, i, 3)."""

    key: str
    title: str
    magnitude: np.ndarray
    colour: Optional[np.ndarray]
    run: int


@dataclass
class Content:
    grid: Volume
    labels: list
    keys: list
    index: tuple  # (i, j, k) of the point the planes go through
    point_source: str
    planes: list
    montage: list = field(default_factory=list)
    fields: list = field(default_factory=list)
    biases: list = field(default_factory=list)
    pilots: list = field(default_factory=list)
    extras: list = field(default_factory=list)
    has_reference: bool = False
    lesion: Optional[np.ndarray] = None  # lesion mask on the display grid (windows keep it unsaturated)


def as_runs(runs) -> list:
    """A run or a sequence of runs as a non-empty list (checked for the attributes a report reads)."""
    if runs is None:
        raise InputError("a report needs at least one run")
    if not isinstance(runs, (list, tuple)):
        runs = [runs]
    runs = list(runs)
    if not runs:
        raise InputError("a report needs at least one run")
    for n, run in enumerate(runs):
        if not isinstance(getattr(run, "output", None), Volume):
            raise InputError(f"run {n} has no output volume; expected a RunOutput from pipeline.denoise_volumes")
    return runs


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def run_labels(runs) -> list:
    """Column titles: the method name, with the preset (then a number) added only where names repeat."""
    labels = [str(r.method) for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.method} ({r.preset})" if labels.count(str(r.method)) > 1 else str(r.method) for r in runs]
    seen = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if labels.count(lab) == 1 else f"{lab} #{seen[lab]}")
    return out


def on_grid(vol, grid: Volume, role: str, label: bool = False) -> Optional[np.ndarray]:
    """Array [k, j, i] of a Volume on the display grid (None passes through)."""
    if vol is None:
        return None
    from SodiumDIPLib.data.resample import resample_to_grid, same_grid

    v3 = as_3d(vol)
    if v3.shape == grid.shape and same_grid(v3, grid, tol=1e-3):
        arr = v3.array
    else:
        arr = resample_to_grid(v3, grid, interpolation="nearest", antialias=False, moving_role=role,
                               target_role="display grid").array
    arr = np.asarray(arr, dtype=np.float32)
    return (arr > 0.5).astype(np.float32) if label else arr


def _vector_on_grid(arr, grid: Volume) -> Optional[np.ndarray]:
    """A vector extra (components first) as (c, k, j, i) on the display grid, or None when it is not one."""
    a = np.asarray(arr)
    if a.ndim == 4 and a.shape[1:] == grid.shape and a.shape[0] in (2, 3):
        return a.astype(np.float32)
    if a.ndim == 3 and grid.shape[0] == 1 and a.shape[1:] == grid.shape[1:] and a.shape[0] == 2:
        return a[:, None].astype(np.float32)  # single slice: (j, i) components
    return None


def _scalar_extra(value, grid: Volume, name: str) -> Optional[np.ndarray]:
    if isinstance(value, Volume):
        return on_grid(value, grid, name)
    a = np.asarray(value) if isinstance(value, np.ndarray) else None
    if a is not None and a.shape == grid.shape:
        return a.astype(np.float32)
    return None


def _find(extras: dict, words, exclude=()) -> Optional[str]:
    """Name of the extra that best matches: names with 'fused' first, then any containing all words."""
    names = [n for n in extras if all(w in n.lower() for w in words) and not any(x in n.lower() for x in exclude)]
    names.sort(key=lambda n: (0 if "fused" in n.lower() else 1, n))
    return names[0] if names else None


def gather(runs, point=None, point_space: str = "lps", planes=None) -> Content:
    """Everything a report shows, on the first run's output grid.

    point: where the three planes cross -- LPS mm (default), RAS mm or voxel index (``point_space``);
    None: the lesion's centroid when a lesion mask is among the inputs, else the centre of the grid.
    planes: subset of ("axial", "coronal", "sagittal"); default all that make sense (one for a single slice).
    """
    runs = as_runs(runs)
    grid = as_3d(runs[0].output)
    labels = run_labels(runs)
    keys = []
    for lab in labels:
        k = slug(lab)
        while k in keys:
            k += "-x"
        keys.append(k)
    inputs = dict(getattr(runs[0], "inputs", None) or {})

    lesion = on_grid(inputs.get("lesion"), grid, "lesion", label=True)
    if point is not None:
        index, source = point_to_index(grid, point, point_space), f"given point ({point_space})"
    else:
        idx = mask_centroid_index(Volume(lesion, grid.spacing, grid.origin, grid.direction)) \
            if lesion is not None else None
        index, source = (idx, "lesion centroid") if idx is not None else (point_to_index(grid), "grid centre")
    valid = available_planes(grid)
    if planes is None:
        planes = valid
    else:
        planes = [planes] if isinstance(planes, str) else list(planes)
        bad = [p for p in planes if p not in valid]
        if bad or not planes:
            raise InputError(f"planes {bad or planes} cannot be shown for this grid; expected some of {valid}")

    content = Content(grid=grid, labels=labels, keys=keys, index=index, point_source=source, planes=planes,
                      lesion=lesion if lesion is not None and lesion.any() else None)
    sodium = on_grid(inputs.get("sodium"), grid, "sodium")
    proton = on_grid(inputs.get("proton_on_grid", inputs.get("proton")), grid, "proton")
    reference = on_grid(inputs.get("reference"), grid, "reference")
    content.has_reference = reference is not None
    outputs = [on_grid(r.output, grid, f"{lab} result") for r, lab in zip(runs, labels)]

    m = content.montage
    if sodium is not None:
        m.append(Panel("input", "sodium input", "intensity", sodium))
    for n, (lab, key, out) in enumerate(zip(labels, keys, outputs)):
        m.append(Panel(f"result-{key}", lab, "intensity", out, n))
    if proton is not None:
        m.append(Panel("proton", "proton (on grid)", "proton", proton))
    if reference is not None:
        m.append(Panel("reference", "reference", "intensity", reference))
        for n, (lab, key, out) in enumerate(zip(labels, keys, outputs)):
            m.append(Panel(f"error-{key}", f"|error| {lab}", "error", np.abs(out - reference), n))

    for n, (run, lab, key) in enumerate(zip(runs, labels, keys)):
        bias = getattr(run, "bias_field", None)
        if bias is not None:
            content.biases.append(Panel(f"bias-{key}", f"bias field {lab}", "bias", on_grid(bias, grid, "bias field"), n))
        extras = dict(getattr(run, "extras", None) or {})
        used = set()
        vec_name = next((nm for nm in sorted(extras, key=lambda s: (0 if "fused" in s.lower() else 1, s))
                         if _vector_on_grid(extras[nm], grid) is not None), None)
        mag_name = _find(extras, ("magnitude",))
        vec = _vector_on_grid(extras[vec_name], grid) if vec_name else None
        mag = _scalar_extra(extras[mag_name], grid, mag_name) if mag_name else None
        if vec is not None or mag is not None:
            if mag is None:
                mag = np.sqrt((vec.astype(np.float64) ** 2).sum(0)).astype(np.float32)
            colour = None
            if vec is not None:
                from SodiumDIPLib.apps.report.views import vector_to_ras_colour

                colour = vector_to_ras_colour(vec, grid)
            content.fields.append(FieldPanel(f"field-{key}", lab, mag, colour, n))
            used.update(x for x in (vec_name, mag_name) if x)
        for nm in sorted(extras):
            if nm in used:
                continue
            arr = _scalar_extra(extras[nm], grid, nm)
            if arr is None:
                continue
            if any(w in nm.lower() for w in PILOT_WORDS):
                # own window ("scalar"): methods may return the pilot in their normalised units
                content.pilots.append(Panel(f"pilot-{key}", f"{nm} {lab}", "scalar", arr, n))
            else:
                content.extras.append(Panel(f"extra-{slug(nm)}-{key}", f"{nm} {lab}", "scalar", arr, n))
    return content
