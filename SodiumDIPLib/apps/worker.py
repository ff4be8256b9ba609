"""Background worker: ``python -m SodiumDIPLib.apps.worker JOB.json`` (``PythonSlicer -m ...`` inside Slicer).

Runs one denoising job and reports on stdout, one JSON object per line, flushed after each line:

    {"event": "started", "pid", "method", "preset", "mode", "shape", "device", "version"}
    {"event": "progress", "iteration", "loss", "metrics": {...}, "elapsed", "eta", "max_iterations"}
    {"event": "snapshot", "path", "iteration", "elapsed"}          intermediate NRRD, written atomically
    {"event": "result", "output", "bias_field", "metrics_json", "params", "metrics", "stop_rule",
                        "iterations", "stop_iteration", "seconds", "cancelled"}
    {"event": "error", "message", "kind"}                           kind: input | internal | cancelled

Job file (JSON object):

    inputs:  {"sodium": path, "proton": path?, "reference": path?, "mask": path?, "lesion": path?,
              "proton_only": path?}  (any format io.read_volume reads; Slicer writes NRRD)
    method, preset, params (dict of overrides), seed, device ("auto", "cpu", "cuda", "cuda:N", "mps")
    output_dir: folder for output.nrrd, bias_field.nrrd, metrics.json, params.json, snapshots
    snapshot_interval_s: seconds between snapshots (0 or less: none; default 3)
    mode: "volume" (default) or "slice" (2D preview) with "slice": {"axis": "i"|"j"|"k", "index": int}
    plugins: optional list of Python files imported first (they may register extra methods)

``python -m SodiumDIPLib.apps.worker --describe`` prints one ``{"event": "methods", "methods": [...]}`` line
(names, descriptions, presets, availability) and exits.

Only the event lines go to stdout: anything else a library prints is sent to stderr, so the protocol
cannot be corrupted from inside the process.

Exit codes (``EXIT_*``): 0 result written; 1 internal error; 2 bad job or input; 3 cancelled (SIGTERM /
SIGINT / parent gone) and the best result so far written; 4 cancelled before any result existed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from SodiumDIPLib.data.io import json_default, json_ready

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_JOB = 2
EXIT_CANCELLED = 3
EXIT_CANCELLED_NO_RESULT = 4

INPUT_ROLES = ("sodium", "proton", "reference", "mask", "lesion", "proton_only")
JOB_KEYS = {"inputs", "method", "preset", "params", "seed", "device", "output_dir", "snapshot_interval_s",
            "mode", "slice", "plugins", "progress_interval_s"}
#: Parameter names that methods use for their iteration budget (for the ETA).
ITERATION_KEYS = ("max_iterations", "iterations", "max_iter", "n_iter", "num_iter", "n_iterations", "steps")
AXES = {"i": 0, "j": 1, "k": 2}


class BadJob(Exception):
    """The job file itself is wrong (exit 2)."""


class Emitter:
    """Writes protocol events to the real stdout; everything else printed goes to stderr."""

    def __init__(self, stream=None):
        if stream is None:
            # Keep a private handle on fd 1 for the protocol, then point fd 1 (and sys.stdout) at stderr.
            sys.stdout.flush()
            stream = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
            os.dup2(2, 1)
            sys.stdout = sys.stderr
        self.stream = stream
        self.lock = threading.Lock()

    def emit(self, _event: str, **fields) -> None:
        record = {"event": _event}
        record.update(fields)
        line = json.dumps(record, default=json_default, allow_nan=False)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


# --- job file -------------------------------------------------------------------------------------------

def load_job(path) -> dict:
    """Read and validate a job file; raises BadJob with a message that names the problem."""
    path = Path(path)
    if not path.is_file():
        raise BadJob(f"job file not found: {path}")
    try:
        job = json.loads(path.read_bytes().decode("utf-8"), parse_float=_finite_float, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise BadJob(f"job file {path} is not UTF-8 text (byte {exc.start}); expected a JSON object") from None
    except RecursionError:
        raise BadJob(f"job file {path} is nested too deeply; expected a flat JSON object") from None
    except (OSError, ValueError) as exc:
        raise BadJob(f"job file {path} is not valid JSON: {' '.join(str(exc).split())[:200]}") from None
    return validate_job(job, base=path.parent)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:30]} is out of range; expected finite numbers")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number; expected finite numbers")


def validate_job(job, base: Path = Path(".")) -> dict:
    """Check types and fill defaults. Relative paths are taken relative to ``base`` (the job's folder)."""
    if not isinstance(job, dict):
        raise BadJob("job must be a JSON object")
    unknown = set(job) - JOB_KEYS
    if unknown:
        raise BadJob(f"unknown job field(s) {sorted(unknown)}; known: {sorted(JOB_KEYS)}")
    inputs = job.get("inputs")
    if not isinstance(inputs, dict) or not inputs.get("sodium"):
        raise BadJob("job.inputs must be an object with at least a 'sodium' file path")
    bad = set(inputs) - set(INPUT_ROLES)
    if bad:
        raise BadJob(f"unknown input role(s) {sorted(bad)}; expected some of {list(INPUT_ROLES)}")
    out = dict(job)
    for role, value in inputs.items():
        if value is not None and not isinstance(value, str):
            raise BadJob(f"job.inputs.{role} must be a file path (a string), got {str(value)[:40]!r}")
    out["inputs"] = {k: str(_resolve(v, base)) for k, v in inputs.items() if v}
    if not job.get("output_dir") or not isinstance(job["output_dir"], str):
        raise BadJob("job.output_dir is required (a folder for the result files, as a string)")
    out["output_dir"] = str(_resolve(job["output_dir"], base))
    out["method"] = str(job.get("method", "dipfusion"))
    out["preset"] = str(job.get("preset", "balanced"))
    params = job.get("params") or {}
    if not isinstance(params, dict):
        raise BadJob("job.params must be an object of parameter overrides")
    out["params"] = params
    from SodiumDIPLib.errors import InputError
    from SodiumDIPLib.data.preflight import check_seed

    try:
        out["seed"] = check_seed(job.get("seed", 0), "job.seed")
    except InputError as exc:
        raise BadJob(str(exc)) from None
    for key, default in (("snapshot_interval_s", 3.0), ("progress_interval_s", 0.0)):
        value = job.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)) \
                or abs(float(value)) > 1e9:
            raise BadJob(f"job.{key} must be a finite number of seconds, got {str(value)[:40]!r}")
        out[key] = float(value)
    for key in ("method", "preset", "device"):
        if key in job and not isinstance(job[key], str):
            raise BadJob(f"job.{key} must be a string, got {str(job[key])[:40]!r}")
    out["device"] = str(job.get("device", "auto"))
    mode = job.get("mode", "volume")
    if mode not in ("volume", "slice"):
        raise BadJob(f"job.mode must be 'volume' or 'slice', got {mode!r}")
    out["mode"] = mode
    if mode == "slice":
        sl = job.get("slice")
        if not isinstance(sl, dict) or "index" not in sl:
            raise BadJob("slice mode needs job.slice = {'axis': 'i'|'j'|'k', 'index': int}")
        axis = sl.get("axis", "k")
        if axis not in AXES and axis not in (0, 1, 2):
            raise BadJob(f"job.slice.axis must be 'i', 'j' or 'k', got {axis!r}")
        try:
            if isinstance(sl["index"], bool) or float(sl["index"]) != int(sl["index"]):
                raise ValueError(sl["index"])
            index = int(sl["index"])
        except (TypeError, ValueError, OverflowError):
            raise BadJob(f"job.slice.index must be an integer, got {sl['index']!r}") from None
        out["slice"] = {"axis": axis if axis in AXES else "ijk"[axis], "index": index}
    plugins = job.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise BadJob("job.plugins must be a list of Python file paths")
    out["plugins"] = [str(_resolve(p, base)) for p in plugins]
    for role, path in out["inputs"].items():  # checked here, before the slow imports
        if not Path(path).exists():
            raise BadJob(f"{role} file not found: {path}")
    return out


def _resolve(p, base: Path) -> Path:
    from SodiumDIPLib.errors import InputError
    from SodiumDIPLib.data.preflight import check_name

    try:
        check_name(str(p), "job path")
    except InputError as exc:
        raise BadJob(str(exc)) from None
    p = Path(str(p)).expanduser()
    return p if p.is_absolute() else (base / p)


def load_plugins(paths) -> None:
    """Import each plugin file (a module that may call methods.register)."""
    for i, path in enumerate(paths):
        path = Path(path)
        if not path.is_file():
            raise BadJob(f"plugin file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"sodiumdip_plugin_{i}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)


# --- slices for the 2D preview ---------------------------------------------------------------------------

def extract_slice(volume, axis: str, index: int):
    """One slice of a 3D volume as a one-slice 3D Volume whose geometry puts it where it was.

    The slice's in-plane axes become i', j' and its normal becomes k' (array [1, rows, cols]), so a method
    sees an ordinary 2D image and the result lands at the right physical place.
    """
    import numpy as np

    from SodiumDIPLib.errors import InputError
    from SodiumDIPLib.data.volume import Volume

    if volume.ndim != 3:
        raise InputError(f"slice preview needs a 3D sodium volume, got shape {volume.shape}")
    a = AXES[axis]
    n = volume.size_ijk[a]
    if not 0 <= index < n:
        raise InputError(f"slice index {index} is outside the sodium volume (axis {axis} has {n} slices)")
    order = [x for x in (0, 1, 2) if x != a] + [a]  # new i', j', k' in terms of old i, j, k
    arr = volume.array  # [k, j, i]
    if axis == "k":
        plane = arr[index]
    elif axis == "j":
        plane = arr[:, index, :]  # rows k, cols i
    else:
        plane = arr[:, :, index]  # rows k, cols j
    ijk0 = [0, 0, 0]
    ijk0[a] = index
    origin = volume.index_to_physical(np.array(ijk0, dtype=float))
    spacing = tuple(volume.spacing[o] for o in order)
    direction = volume.direction[:, order]
    return Volume(np.ascontiguousarray(plane[None]), spacing, tuple(origin), direction)


# --- the run --------------------------------------------------------------------------------------------

class Run:
    """State shared between the optimiser's callbacks and the signal handlers."""

    def __init__(self, job: dict, emitter: Emitter):
        self.job = job
        self.emitter = emitter
        self.cancel = threading.Event()
        self.parent = os.getppid()
        self.started = time.perf_counter()
        self.last_snapshot = self.started
        self.last_progress = 0.0
        self.snapshots: list = []
        self.snapshot_count = 0
        self.max_iterations = None
        self.grid = None

    def should_cancel(self) -> bool:
        if not self.cancel.is_set() and os.getppid() != self.parent:
            self.cancel.set()  # the GUI that started us is gone: stop and keep what we have
        return self.cancel.is_set()

    def on_progress(self, event: dict, image_fn) -> None:
        now = time.perf_counter()
        iteration = int(event.get("iteration", 0))
        elapsed = now - self.started
        total = event.get("max_iterations") or self.max_iterations
        eta = None
        if total and iteration > 0:
            eta = max(0.0, float(event.get("elapsed", elapsed)) / iteration * (int(total) - iteration))
        if now - self.last_progress >= self.job["progress_interval_s"]:
            self.last_progress = now
            metrics = {k: v for k, v in event.items()
                       if k not in ("iteration", "elapsed", "loss", "max_iterations")
                       and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.emitter.emit("progress", **json_ready({
                "iteration": iteration, "loss": event.get("loss"), "metrics": metrics,
                "elapsed": elapsed, "eta": eta, "max_iterations": total}))
        interval = self.job["snapshot_interval_s"]
        if image_fn is not None and interval > 0 and now - self.last_snapshot >= interval:
            self.last_snapshot = now
            try:
                self.write_snapshot(image_fn(), iteration, elapsed)
            except OSError as exc:  # a live preview is not worth the run (disk full, folder gone)
                print(f"snapshot not written: {exc}", file=sys.stderr)
        self.should_cancel()

    def write_snapshot(self, array, iteration: int, elapsed: float) -> None:
        import numpy as np

        from SodiumDIPLib.data.io import write_volume

        self.snapshot_count += 1
        path = Path(self.job["output_dir"]) / f"snapshot_{self.snapshot_count:04d}.nrrd"
        arr = np.asarray(array, dtype=np.float32).reshape(self.grid.shape)
        write_volume(self.grid.with_array(arr), path, compress=False)
        self.snapshots.append(path)
        while len(self.snapshots) > 2:  # the GUI reads the newest; older ones are only disk clutter
            Path(self.snapshots.pop(0)).unlink(missing_ok=True)
        self.emitter.emit("snapshot", path=str(path), iteration=iteration, elapsed=elapsed)


def _read_inputs(job: dict) -> dict:
    from SodiumDIPLib.data.io import read_volume

    vols = {}
    for role in INPUT_ROLES:
        path = job["inputs"].get(role)
        if path:
            vols[role] = read_volume(path, role)
    return vols


def _iteration_budget(method: str, preset: str, overrides: dict):
    from SodiumDIPLib.methods import get_method

    try:
        params = get_method(method).parameters(preset, overrides)
    except Exception:  # noqa: BLE001 - the pipeline reports bad parameters itself, with its own message
        return None
    for key in ITERATION_KEYS:
        value = params.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


#: Files the worker writes into job.output_dir (glob patterns).
OUTPUT_FILES = ("output.nrrd", "bias_field.nrrd", "metrics.json", "params.json", "snapshot_*.nrrd")


def preflight(job: dict) -> None:
    """Everything that can be checked before reading or computing: method, preset, every parameter (range-
    checked), device, the inputs (present, readable) and the output folder (legal, writable, holding no input
    among the names the worker writes). Raises InputError."""
    from SodiumDIPLib.methods import get_method
    from SodiumDIPLib.pipeline import resolve_device
    from SodiumDIPLib.data.preflight import Plan, plan_parameter_files, run_parameters

    spec = get_method(job["method"])
    params = run_parameters(spec, job["preset"], job["params"])
    resolve_device(job["device"])
    plan = Plan()
    for role, path in job["inputs"].items():
        plan.add_input(role, path)
    plan_parameter_files(plan, spec, params)
    out_dir = Path(job["output_dir"])
    plan.add_folder("job.output_dir", out_dir, OUTPUT_FILES)
    for name in OUTPUT_FILES[:4]:
        plan.add_output(f"job.output_dir {name}", out_dir / name)
    plan.check()


def execute(job: dict, emitter: Emitter, run: Run) -> int:
    """Run the job; returns the exit code. InputError / BadJob propagate to ``main``."""
    from SodiumDIPLib import __version__
    from SodiumDIPLib.pipeline import denoise_volumes, write_outputs

    load_plugins(job["plugins"])
    preflight(job)
    out_dir = Path(job["output_dir"])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadJob(f"job.output_dir {out_dir} cannot be created ({exc.strerror or exc})") from None
    vols = _read_inputs(job)
    sodium = vols["sodium"]
    if job["mode"] == "slice":
        sodium = extract_slice(sodium, job["slice"]["axis"], job["slice"]["index"])
    run.grid = sodium
    run.max_iterations = _iteration_budget(job["method"], job["preset"], job["params"])
    emitter.emit("started", pid=os.getpid(), method=job["method"], preset=job["preset"], mode=job["mode"],
                 shape=list(sodium.shape), device=job["device"], version=__version__,
                 max_iterations=run.max_iterations)
    result = denoise_volumes(
        sodium, vols.get("proton"), method=job["method"], preset=job["preset"], params=job["params"],
        seed=job["seed"], device=job["device"], reference=vols.get("reference"), mask=vols.get("mask"),
        lesion=vols.get("lesion"), proton_only=vols.get("proton_only"),
        on_progress=run.on_progress, should_cancel=run.should_cancel)
    paths = write_outputs(
        result, out_dir / "output.nrrd",
        bias_field_path=(out_dir / "bias_field.nrrd") if result.bias_field is not None else None,
        metrics_json=out_dir / "metrics.json", params_path=out_dir / "params.json")
    for snap in run.snapshots:  # the result supersedes them
        Path(snap).unlink(missing_ok=True)
    cancelled = result.stop_rule == "cancelled"
    emitter.emit("result", **json_ready({
        "output": paths["output"], "bias_field": paths.get("bias_field"), "metrics_json": paths["metrics_json"],
        "params": paths["params"], "metrics": result.metrics, "stop_rule": result.stop_rule,
        "iterations": result.iterations, "stop_iteration": result.stop_iteration, "seconds": result.seconds,
        "device": result.device, "method": result.method, "preset": result.preset, "mode": job["mode"],
        "used_params": result.params, "cancelled": cancelled}))
    return EXIT_CANCELLED if cancelled else EXIT_OK


def describe_methods() -> list:
    """Every registered method with its presets, availability and parameter declarations (what a GUI needs
    to build its panel; see Method.describe and SodiumDIPLib.params)."""
    from SodiumDIPLib.methods import list_methods

    return [m.describe() for m in list_methods()]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    emitter = Emitter()
    if argv == ["--describe"]:  # the GUI asks here, so torch is never imported in its own process
        try:
            emitter.emit("methods", methods=json_ready(describe_methods()))
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            emitter.emit("error", message=f"cannot list the methods: {type(exc).__name__}: {exc}", kind="internal")
            return EXIT_INTERNAL
        return EXIT_OK
    if len(argv) != 1:
        emitter.emit("error", message="usage: python -m SodiumDIPLib.apps.worker JOB.json | --describe", kind="input")
        return EXIT_BAD_JOB
    try:
        job = load_job(argv[0])
    except BadJob as exc:
        emitter.emit("error", message=str(exc), kind="input")
        return EXIT_BAD_JOB
    except RecursionError:
        emitter.emit("error", message=f"job file {argv[0]} is nested too deeply; expected a flat JSON object",
                     kind="input")
        return EXIT_BAD_JOB
    run = Run(job, emitter)

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        run.cancel.set()

    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):  # SIGBREAK: CTRL_BREAK_EVENT on Windows
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)

    from SodiumDIPLib.errors import InputError

    try:
        return execute(job, emitter, run)
    except (BadJob, InputError) as exc:
        if run.cancel.is_set():
            emitter.emit("error", message=f"cancelled before a result existed ({exc})", kind="cancelled")
            return EXIT_CANCELLED_NO_RESULT
        emitter.emit("error", message=str(exc), kind="input")
        return EXIT_BAD_JOB
    except MemoryError:
        emitter.emit("error", message="the worker ran out of memory; try the 'fast' preset, a smaller volume, "
                                      "or the slice preview", kind="internal")
        return EXIT_INTERNAL
    except Exception as exc:  # noqa: BLE001 - the GUI must get one readable line, the log gets the traceback
        traceback.print_exc(file=sys.stderr)
        emitter.emit("error", message=f"internal error: {type(exc).__name__}: {exc}", kind="internal")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
