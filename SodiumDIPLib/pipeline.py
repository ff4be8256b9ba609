"""From volumes to a result: validation, proton onto the sodium grid, scaling, the method, metrics.

``denoise_volumes`` is what the CLI, the worker and the Slicer logic call; ``run_method`` runs a registered
method on a prepared Problem (also used by k-space reconstruction); ``write_outputs`` writes a result's
files all-or-nothing.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from SodiumDIPLib import __version__
from SodiumDIPLib.errors import Cancelled, InputError
from SodiumDIPLib.data.io import check_output_path, json_default, validate_volume
from SodiumDIPLib.methods import get_method
from SodiumDIPLib.problem import MethodResult, Problem, RunContext, normalised_problem
from SodiumDIPLib.physics.base import Identity
from SodiumDIPLib.data.resample import resample_to_grid, same_grid
from SodiumDIPLib.data.support import head_mask
from SodiumDIPLib.data.volume import Volume


@dataclass
class RunOutput:
    output: Volume
    bias_field: Optional[Volume]
    metrics: dict
    method: str
    preset: str
    params: dict
    history: list
    stop_rule: str
    stop_iteration: int
    iterations: int
    seconds: float
    peak_memory_mb: float
    extras: dict = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0
    version: str = __version__
    inputs: dict = field(default_factory=dict)
    scale: float = 1.0  # the input value that the normalisation mapped to 1 (input units)

    def summary(self) -> dict:
        """JSON-ready description of the run (no arrays)."""
        return {
            "method": self.method, "preset": self.preset, "params": self.params, "metrics": self.metrics,
            "stop_rule": self.stop_rule, "stop_iteration": self.stop_iteration, "iterations": self.iterations,
            "seconds": round(self.seconds, 3), "peak_memory_mb": round(self.peak_memory_mb, 1),
            "device": self.device, "seed": self.seed, "version": self.version, "history": self.history,
        }


def resolve_device(device: str = "auto") -> str:
    """'auto' -> cuda if available, else mps, else cpu; an unavailable explicit choice is an input error."""
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu or auto")
        index = device.split(":", 1)[1] if ":" in device else "0"
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: expected cuda or cuda:N with N < {torch.cuda.device_count()}")
        return device
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise InputError("device 'mps' requested but Apple MPS is not available; use --device cpu or auto")
        return "mps"
    raise InputError(f"unknown device {device!r}; expected auto, cpu, cuda, cuda:N or mps")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


class _PeakMemory:
    """Peak resident memory (MB) of this process during a block (sampled), or CUDA peak allocation."""

    def __init__(self, device: str, interval: float = 0.05):
        self.device, self.interval = device, interval
        self.peak = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
        except (OSError, ValueError):  # non-Linux: lifetime peak is the best we can do
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
        self.peak = self.rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mb())
        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        return False


def run_method(problem: Problem, method: str = "dipfusion", preset: str = "balanced", params: Optional[dict] = None,
               seed: int = 0, device: str = "auto",
               on_progress: Optional[Callable] = None, should_cancel: Optional[Callable[[], bool]] = None):
    """Run a registered method on a prepared problem. Returns (MethodResult, info dict with seconds, memory, ...)."""
    spec = get_method(method)
    spec.check_inputs(problem.proton is not None, kspace=not problem.operator.is_identity)
    parameters = spec.parameters(preset, params)
    dev = resolve_device(device)
    seed_everything(seed)
    ctx = RunContext(device=dev, seed=seed, on_progress=on_progress, should_cancel=should_cancel)
    started = time.perf_counter()
    with _PeakMemory(dev) as mem:
        try:
            result = spec.run(problem, parameters, ctx)
        except Cancelled:
            raise InputError(f"method {method!r} was cancelled before it produced a result") from None
        except torch.cuda.OutOfMemoryError:
            raise InputError(f"the GPU ran out of memory running {method!r} on an image of shape {problem.image_shape}; "
                             "use --device cpu, the 'fast' preset, or a smaller volume") from None
    seconds = time.perf_counter() - started
    if not result.params:
        result.params = parameters
    info = {"seconds": seconds, "peak_memory_mb": mem.peak, "device": dev, "seed": seed, "preset": preset,
            "method": method}
    return result, info


def on_grid(vol: Optional[Volume], grid: Volume, role: str, label: bool) -> Optional[np.ndarray]:
    """An optional companion volume (reference, mask) as an array on the sodium grid."""
    if vol is None:
        return None
    if not label:
        validate_volume(vol, role)
    if vol.shape == grid.shape and same_grid(vol, grid, tol=1e-3):
        arr = vol.array
    else:
        arr = resample_to_grid(vol, grid, interpolation="nearest" if label else "linear", antialias=not label,
                               moving_role=role, target_role="sodium").array
    if label:
        arr = arr > 0.5
        if not arr.any():
            raise InputError(f"{role} mask is empty on the sodium grid; expected at least one voxel inside")
    return arr.astype(bool) if label else arr.astype(np.float32)


def prepare_denoising(sodium: Volume, proton: Optional[Volume] = None, reference: Optional[Volume] = None,
                      mask: Optional[Volume] = None, lesion: Optional[Volume] = None,
                      proton_only: Optional[Volume] = None, noise_sigma: Optional[float] = None):
    """Validate inputs and build the normalised denoising Problem. Returns (problem, scale, inputs dict)."""
    validate_volume(sodium, "sodium")
    if sodium.ndim == 3 and 1 in sodium.shape:
        axis = sodium.shape.index(1)
        if axis != 0:
            raise InputError(f"sodium: a single slice must be the last image axis (k); got shape {sodium.shape}")
    y = sodium.array.astype(np.float32)
    squeeze = y.ndim == 3 and y.shape[0] == 1
    arr = y[0] if squeeze else y
    if min(arr.shape) < 8:
        raise InputError(f"sodium: image of shape {sodium.shape} is too small; expected at least 8 voxels per axis")
    proton_grid = on_grid(proton, sodium, "proton", label=False)
    ref = on_grid(reference, sodium, "reference", label=False)
    user_mask = on_grid(mask, sodium, "mask", label=True)
    les = on_grid(lesion, sodium, "lesion", label=True)
    ponly = on_grid(proton_only, sodium, "proton-only", label=True)
    sq = (lambda a: a[0] if (a is not None and squeeze) else a)
    support = sq(user_mask) if user_mask is not None else head_mask(arr)
    problem, scale = normalised_problem(arr, Identity(arr.shape), arr, tuple(reversed(sodium.spacing[: arr.ndim])),
                                        support, noise_sigma, proton=sq(proton_grid),
                                        reference=sq(ref))
    inputs = {"sodium": sodium}
    if proton_grid is not None:
        inputs["proton_on_grid"] = sodium.with_array(proton_grid)
    if ref is not None:
        inputs["reference"] = sodium.with_array(ref)
    inputs["mask"] = sodium.with_array((support[None] if squeeze else support).astype(np.uint8))
    if les is not None:
        inputs["lesion"] = sodium.with_array(les.astype(np.uint8))
    if ponly is not None:
        inputs["proton_only"] = sodium.with_array(ponly.astype(np.uint8))
    return problem, scale, inputs


def denoise_volumes(sodium: Volume, proton: Optional[Volume] = None, method: str = "dipfusion",
                    preset: str = "balanced", params: Optional[dict] = None, seed: int = 0, device: str = "auto",
                    reference: Optional[Volume] = None, mask: Optional[Volume] = None,
                    lesion: Optional[Volume] = None, proton_only: Optional[Volume] = None,
                    proton_only_contrast: Optional[float] = None, noise_sigma: Optional[float] = None,
                    on_progress: Optional[Callable] = None,
                    should_cancel: Optional[Callable[[], bool]] = None) -> RunOutput:
    """Denoise a sodium volume (guided by a registered proton volume) with a registered method.

    Inputs are Volumes with geometry; the proton (any grid) is resampled onto the sodium grid. reference, mask,
    lesion, proton_only are optional and only used for metrics and monitoring curves. Progress events carry
    values in the sodium's original units (``image`` callables return rescaled arrays on the sodium grid).
    """
    get_method(method)  # unknown method: fail before any work
    problem, scale, inputs = prepare_denoising(sodium, proton, reference, mask, lesion, proton_only, noise_sigma)
    squeeze = sodium.ndim == 3 and sodium.shape[0] == 1
    unsq = (lambda a: a[None] if squeeze else a)

    progress = None
    if on_progress is not None:
        def progress(event, image_fn):
            on_progress(event, (lambda: unsq(image_fn() * scale)) if image_fn is not None else None)

    result, info = run_method(problem, method, preset, params, seed, device, progress, should_cancel)
    return run_output(result, info, sodium, scale, inputs, proton_only_contrast=proton_only_contrast)


def run_output(result: MethodResult, info: dict, grid: Volume, unit: float, inputs: dict,
               metrics: Optional[dict] = None, proton_only_contrast: Optional[float] = None,
               magnitude: bool = False) -> RunOutput:
    """The one place a method's result becomes a RunOutput.

    Images go back to the input's units (normalised x ``unit``, the input value that became 1; extras named
    "pilot*" are sodium images and scale too) and onto ``grid`` (a 2D result on a one-slice grid gains the
    slice axis); ``magnitude``: the output is |x| (k-space reconstructions). ``info``: run_method's. Metrics
    against ``inputs`` (compute_run_metrics) unless ``metrics`` are given."""
    squeeze = np.ndim(result.image) == grid.ndim - 1
    unsq = (lambda a: a[None] if squeeze else a)
    image = np.asarray(result.image, dtype=np.float32)
    output = grid.with_array(unsq((np.abs(image) if magnitude else image) * unit))
    bias = None if result.bias_field is None else grid.with_array(unsq(np.asarray(result.bias_field, np.float32)))
    extras = {name: _extra_volume(grid, np.asarray(arr) * (unit if name.startswith("pilot") else 1.0), squeeze)
              for name, arr in result.extras.items()}
    if metrics is None:
        metrics = compute_run_metrics(output, inputs, proton_only_contrast)
    return RunOutput(output=output, bias_field=bias, metrics=metrics, method=info["method"], preset=info["preset"],
                     params=result.params, history=result.history, stop_rule=result.stop_rule,
                     stop_iteration=result.stop_iteration, iterations=result.iterations,
                     seconds=info["seconds"], peak_memory_mb=info["peak_memory_mb"], extras=extras,
                     device=info["device"], seed=info["seed"], inputs=inputs, scale=unit)


def _extra_volume(grid: Volume, arr, squeeze: bool):
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape == grid.shape or (squeeze and arr.shape == grid.shape[1:]):
        return grid.with_array(arr[None] if squeeze and arr.ndim == grid.ndim - 1 else arr)
    return arr  # vector fields (components first) stay arrays on the same grid


def compute_run_metrics(output: Volume, inputs: dict, proton_only_contrast: Optional[float] = None) -> dict:
    """Metrics of a result against what the inputs provide (reference, mask, lesion, proton-only)."""
    from SodiumDIPLib.metrics.quality import compute_metrics

    get = (lambda k: inputs[k].array if k in inputs else None)
    mask = get("mask")
    return compute_metrics(
        output.array, reference=get("reference"), mask=None if mask is None else mask.astype(bool),
        lesion=None if get("lesion") is None else get("lesion").astype(bool),
        proton_only=None if get("proton_only") is None else get("proton_only").astype(bool),
        proton_only_contrast=proton_only_contrast)


def default_params_path(output_path) -> Path:
    """Where a run's parameter file goes: next to its output, ``<name>.params.json``."""
    output_path = Path(output_path)
    name = output_path.name
    for s in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(s):
            name = name[: -len(s)]
            break
    return output_path.with_name(name + ".params.json")


def output_files(output_path, bias_field_path=None, metrics_json=None, params_path=None) -> dict:
    """Every file ``write_outputs`` writes for these arguments, by role (companions of detached headers
    included), so a pre-flight can check them all before the run."""
    from SodiumDIPLib.data.preflight import check_name

    files = {"output": Path(output_path)}
    if bias_field_path is not None:
        files["bias-field"] = Path(bias_field_path)
    files["params"] = Path(params_path) if params_path is not None else default_params_path(output_path)
    if metrics_json is not None:
        files["metrics-json"] = Path(metrics_json)
    for role, path in files.items():
        check_name(path, role)
    return files


def detached_data_files(path) -> list:
    """The data files SimpleITK writes beside a detached header (.nhdr: .raw / .raw.gz; .mhd: .raw / .zraw)."""
    path = Path(path)
    name = path.name
    for suffix, data in ((".nhdr", (".raw", ".raw.gz")), (".mhd", (".raw", ".zraw"))):
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            return [path.with_name(stem + d) for d in data]
    return []


def stage_outputs(staging, run: RunOutput, output_path, bias_field_path=None, metrics_json=None, params_path=None,
                  summary_extra: Optional[dict] = None) -> dict:
    """Render a result's files (volume, bias field, parameter file, metrics JSON) into ``staging``; nothing
    reaches its destination before ``staging.commit()``. Returns {role: final path}."""
    from SodiumDIPLib.data.io import stage_text, stage_volume

    files = output_files(output_path, bias_field_path, metrics_json, params_path)
    check_output_path(files["output"])
    if bias_field_path is not None:
        if run.bias_field is None:
            raise InputError(f"method {run.method!r} does not estimate a bias field; drop --bias-field")
        check_output_path(files["bias-field"], "bias-field")
    stage_volume(staging, run.output, files["output"])
    if "bias-field" in files:
        stage_volume(staging, run.bias_field, files["bias-field"])
    record = {"method": run.method, "preset": run.preset, "seed": run.seed, "device": run.device,
              "version": run.version, "params": run.params}
    stage_text(staging, json.dumps(record, indent=2, default=json_default), files["params"])
    if "metrics-json" in files:
        summary = run.summary()
        summary.update(summary_extra or {})
        stage_text(staging, json.dumps(summary, indent=2, default=json_default), files["metrics-json"])
    paths = {"output": str(files["output"]), "params": str(files["params"])}
    if "bias-field" in files:
        paths["bias_field"] = str(files["bias-field"])
    if "metrics-json" in files:
        paths["metrics_json"] = str(files["metrics-json"])
    return paths


def write_outputs(run: RunOutput, output_path, bias_field_path=None, metrics_json=None, params_path=None,
                  summary_extra: Optional[dict] = None) -> dict:
    """Write the result (and bias field, metrics JSON, parameter file) all-or-nothing: every file is rendered
    first, then all are moved into place; a failure leaves every destination as it was. Returns the paths."""
    from SodiumDIPLib.data.safewrite import Staging

    with Staging() as staging:
        paths = stage_outputs(staging, run, output_path, bias_field_path, metrics_json, params_path, summary_extra)
        staging.commit()
    return paths


def load_params_file(path) -> dict:
    """Parameters from a JSON or YAML file (a run's own ``.params.json`` works: its ``params`` are taken)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"parameter file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"parameter file {path} is not UTF-8 text (byte {exc.start}); expected a JSON or YAML "
                         "text file") from None
    except OSError as exc:
        raise InputError(f"parameter file {path} cannot be read ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the file's fault
        raise InputError(f"parameter file {path} is not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"parameter file {path}: expected a mapping of parameter names to values")
    return dict(data.get("params", data)) if "params" in data and isinstance(data["params"], dict) else data
