"""The ``sodiumdip`` command line.

Exit status: 0 success, 2 bad input (one line on stderr naming the problem), 1 internal error.
Subcommands of other modules plug in through their ``register_commands(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np

from SodiumDIPLib import __version__
from SodiumDIPLib.apps.console import progress_printer, read_run_volumes
from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.preflight import bounded_int, finite_number

#: Modules that add subcommands (each defines register_commands(subparsers)).
COMMAND_MODULES = ("SodiumDIPLib.apps.benchmark", "SodiumDIPLib.apps.cli_kspace", "SodiumDIPLib.apps.report.cli",
                   "SodiumDIPLib.apps.web", "SodiumDIPLib.learned.prior")

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as input errors (exit 2, one line)."""

    def error(self, message):
        raise InputError(f"{self.prog}: {message}")


def add_run_options(p: argparse.ArgumentParser, default_method: str = "dipfusion") -> None:
    """Options shared by denoise / reconstruct / compare: method, preset, parameters, seed, device."""
    p.add_argument("--method", default=default_method, help=f"method name (see `sodiumdip methods`; default {default_method})")
    p.add_argument("--preset", default="balanced", help="fast | balanced | quality (default balanced)")
    p.add_argument("--params", metavar="FILE", help="JSON or YAML parameter file (a run's .params.json works)")
    p.add_argument("--set", metavar="NAME=VALUE", action="append", default=[],
                   help="override one parameter (repeatable), e.g. --set lambda_dtv=0.02")
    p.add_argument("--seed", type=bounded_int, default=0, help="random seed (same seed + device = same output)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_evaluation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", metavar="PATH", help="reference volume for PSNR/SSIM/... (optional)")
    p.add_argument("--mask", metavar="PATH", help="object mask (default: estimated head mask)")
    p.add_argument("--lesion", metavar="PATH", help="lesion mask for contrast recovery (optional)")
    p.add_argument("--proton-only", metavar="PATH", help="proton-only structure mask for leakage (optional)")
    p.add_argument("--metrics-json", metavar="PATH", help="write metrics, parameters and curves as JSON")


def parse_overrides(args) -> dict:
    """Merge --params FILE and --set NAME=VALUE (the latter wins)."""
    from SodiumDIPLib.pipeline import load_params_file

    params = load_params_file(args.params) if getattr(args, "params", None) else {}
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected NAME=VALUE")
        key, value = item.split("=", 1)
        params[key.strip()] = value.strip()
    return params


# --- subcommands -------------------------------------------------------------------------------------------
def cmd_methods(args) -> int:
    from SodiumDIPLib.methods import list_methods

    if getattr(args, "parameters", None):
        return _print_parameters(args.parameters)
    for m in list_methods():
        reason = m.availability()
        flags = ", ".join(f for f, on in (("k-space", m.supports_kspace), ("needs proton", m.needs_proton)) if on)
        state = f"unavailable: {reason}" if reason else "available"
        print(f"{m.name:12s} {m.description} [{flags or 'image only'}; {state}]")
    return EXIT_OK


def _print_parameters(name: str) -> int:
    """Every parameter of method ``name`` as declared (SodiumDIPLib.params): type and range, unit, the three
    presets' values and what it does."""
    from SodiumDIPLib.methods import list_methods
    from SodiumDIPLib.params import spec

    methods = {m.name: m for m in list_methods()}
    if name not in methods:
        raise InputError(f"--parameters {name!r}: unknown method; expected one of {', '.join(sorted(methods))}")
    m = methods[name]
    print(f"{m.name}: {m.description}")
    for key in m.presets.get("balanced", {}):
        declared = spec(m.name, key)
        values = " / ".join(str(m.presets[p].get(key)) for p in ("fast", "balanced", "quality") if p in m.presets)
        unit = f" [{declared.unit}]" if declared and declared.unit else ""
        print(f"  {key}{unit}: {declared.expects() if declared else 'undeclared'}; fast/balanced/quality {values}")
        if declared:
            print(f"      {declared.doc}")
    return EXIT_OK


def cmd_phantom(args) -> int:
    from SodiumDIPLib.data.phantom import make_phantom, write_case

    from SodiumDIPLib.data.preflight import Plan, check_seed

    shape = _parse_shape(args.shape)
    if not args.snr > 0:
        raise InputError(f"--snr {args.snr}: expected a positive number")
    check_seed(args.seed)
    plan = Plan()
    plan.add_folder("--out", args.out)
    plan.check()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    case = make_phantom(kind=args.kind, seed=args.seed, shape=shape, snr=args.snr)
    paths = write_case(case, out, fmt=args.format)
    for name, path in paths.items():
        print(f"{name:14s} {path}")
    return EXIT_OK


def _parse_shape(text: str) -> tuple:
    try:
        parts = tuple(int(p) for p in str(text).lower().replace("x", ",").split(",") if p)
        if any(p > 2048 for p in parts):
            raise ValueError(text)
    except ValueError:
        raise InputError(f"--shape {text!r}: expected N (cube), NxN (single slice) or NxNxN, sizes up to 2048") from None
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) not in (2, 3) or min(parts) < 8:
        raise InputError(f"--shape {text!r}: expected 2 or 3 sizes of at least 8")
    return parts


def check_run_request(args, inputs: dict):
    """The pre-flight of denoise / reconstruct, before anything is read or computed: method, preset, every
    parameter (range-checked), seed, device, --bias-field against the method, every input (``inputs``: role ->
    path, plus --params) and every output (volume, bias field, parameter file, metrics JSON, report folder):
    resolved, legal, writable, and no output an input or another output. Returns (method spec, overrides,
    full parameters)."""
    from SodiumDIPLib.data.io import check_output_path
    from SodiumDIPLib.methods import get_method
    from SodiumDIPLib.pipeline import detached_data_files, output_files, resolve_device
    from SodiumDIPLib.data.preflight import Plan, check_bias_option, check_seed, check_text, plan_parameter_files, run_parameters
    from SodiumDIPLib.apps.report.cli import plan_report

    spec = get_method(check_text(args.method, "--method"))
    overrides = parse_overrides(args)
    params = run_parameters(spec, args.preset, overrides)
    args.seed = check_seed(args.seed)
    resolve_device(check_text(args.device, "--device"))
    check_bias_option(spec, params, args.bias_field)
    plan = Plan()
    for role, path in inputs.items():
        plan.add_input(role, path)
    plan.add_input("--params file", getattr(args, "params", None))
    plan_parameter_files(plan, spec, params)
    files = output_files(args.output, args.bias_field, args.metrics_json)
    check_output_path(files["output"])
    if args.bias_field:
        check_output_path(files["bias-field"], "bias-field")
    for role, path in files.items():
        plan.add_output(role, path, detached_data_files(path))
    plan_report(plan, args)
    plan.check()
    return spec, overrides, params


def write_run(runs, args, output_path=None, bias_field_path=None, metrics_json=None, summary_extra=None) -> dict:
    """Write a run's files and its --report all-or-nothing (after the whole computation). Returns the paths."""
    from SodiumDIPLib.pipeline import stage_outputs
    from SodiumDIPLib.apps.report.cli import stage_report_from_args
    from SodiumDIPLib.data.safewrite import Staging

    run = runs[0]
    if bias_field_path and run.bias_field is None:
        if "auto" not in (run.params.get("bias_correction"), run.params.get("bias_select")):
            raise InputError(f"method {run.method!r} does not estimate a bias field; drop --bias-field")
        # "auto" found no receive bias in the data: the estimated field is b = 1 (the run's diagnostics say why)
        run.bias_field = run.output.with_array(np.ones_like(run.output.array, dtype=np.float32))
    with Staging() as staging:
        paths = stage_outputs(staging, run, output_path, bias_field_path, metrics_json,
                              summary_extra=summary_extra) if output_path is not None else {}
        report = stage_report_from_args(staging, runs, args)
        if report:
            paths["report"] = report["html"]
        staging.commit()
    return paths


def cmd_denoise(args) -> int:
    from SodiumDIPLib.pipeline import denoise_volumes
    from SodiumDIPLib.apps.report.cli import check_report_point

    inputs = {"sodium": args.sodium, "proton": args.proton, "reference": args.reference, "mask": args.mask,
              "lesion": args.lesion, "proton-only": args.proton_only}
    spec, overrides, params = check_run_request(args, inputs)
    volumes = read_run_volumes(args)  # keyword arguments of denoise_volumes
    check_report_point(args, volumes["sodium"])
    on_progress, close = progress_printer(args, params.get("iterations"))
    try:
        run = denoise_volumes(**volumes, method=args.method, preset=args.preset, params=overrides,
                              seed=args.seed, device=args.device, on_progress=on_progress)
    finally:
        close()
    paths = write_run([run], args, args.output, args.bias_field, args.metrics_json)
    print_run_summary(run, paths)
    return EXIT_OK


def report_paths(runs, args):
    """Write the report asked for by --report; returns the HTML path (None when not asked)."""
    from SodiumDIPLib.apps.report.cli import report_from_args

    written = report_from_args(runs, args)
    return None if not written else str(written.get("html", args.report))


def print_run_summary(run, paths: dict) -> None:
    from SodiumDIPLib.metrics.quality import format_metrics_table

    print(f"method {run.method} (preset {run.preset}) on {run.device}: {run.iterations} iterations, "
          f"stopped by {run.stop_rule} at {run.stop_iteration}, {run.seconds:.1f} s, peak {run.peak_memory_mb:.0f} MB")
    print(format_metrics_table(run.metrics))
    for name, path in paths.items():
        print(f"wrote {name}: {path}")


def cmd_metrics(args) -> int:
    from SodiumDIPLib.data.io import read_volume, write_text_atomic
    from SodiumDIPLib.metrics.quality import compute_metrics, format_metrics_table
    from SodiumDIPLib.data.preflight import Plan
    from SodiumDIPLib.data.resample import same_grid

    plan = Plan()
    plan.add_input("image", args.image)
    for role in ("reference", "mask", "lesion", "proton_only"):
        plan.add_input(role.replace("_", "-"), getattr(args, role))
    plan.add_output("--json", args.json)
    plan.check()
    image = read_volume(args.image, "image")
    arrays = {}
    for role in ("reference", "mask", "lesion", "proton_only"):
        path = getattr(args, role)
        if path is None:
            continue
        vol = read_volume(path, role.replace("_", "-"))
        if not same_grid(vol, image, tol=1e-3):
            raise InputError(f"{role.replace('_', '-')} {path} is not on the grid of the image {args.image} "
                             f"(shape {vol.shape} vs {image.shape}); expected the same grid")
        arrays[role] = vol.array if role == "reference" else vol.array > 0.5
    metrics = compute_metrics(image.array, proton_only_contrast=args.proton_only_contrast, **arrays)
    print(format_metrics_table(metrics))
    if args.json:
        write_text_atomic(json.dumps(metrics, indent=2, default=float), args.json)
    return EXIT_OK


def cmd_demo(args) -> int:
    from SodiumDIPLib.apps.demo import run_demo
    from SodiumDIPLib.methods import get_method
    from SodiumDIPLib.data.preflight import Plan, check_seed, run_parameters

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise InputError("--methods: expected a comma-separated list of method names, e.g. tv,dtv,dipfusion")
    for name in methods:
        run_parameters(get_method(name), args.preset, {})
    seed = check_seed(args.seed)
    plan = Plan()
    plan.add_folder("--out", args.out)
    plan.check()
    run_demo(args.out, methods=methods, preset=args.preset, seed=seed,
             device=args.device, shape=_parse_shape(args.shape), quiet=args.quiet)
    return EXIT_OK


def _add_report_options(p):
    from SodiumDIPLib.apps.report.cli import add_report_options

    add_report_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sodiumdip", description="Proton-guided DIP denoising and reconstruction of sodium MRI.")
    parser.add_argument("--version", action="version", version=f"sodiumdip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("methods", help="list the available methods (--parameters NAME: a method's parameters)")
    p.add_argument("--parameters", metavar="METHOD", default=None,
                   help="print every parameter of METHOD: type, range, unit, preset values, what it does")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("phantom", help="write a built-in phantom case to a folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--kind", default="head", choices=("head", "breast"))
    p.add_argument("--shape", default="48", help="sodium grid: N, NxNxN or NxN for a single slice (default 48)")
    p.add_argument("--snr", type=finite_number, default=10.0, help="mean brain signal / noise sigma (default 10)")
    p.add_argument("--seed", type=bounded_int, default=0)
    p.add_argument("--format", default="nrrd", choices=("nrrd", "nii.gz"))
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("denoise", help="denoise a sodium volume guided by a proton volume")
    p.add_argument("--sodium", required=True, metavar="PATH", help="sodium volume (NIfTI, NRRD, MHA, DICOM folder)")
    p.add_argument("--proton", metavar="PATH", help="registered proton volume (any grid; resampled by geometry)")
    p.add_argument("--output", required=True, metavar="PATH", help="denoised volume to write (.nii.gz, .nrrd, .mha)")
    p.add_argument("--bias-field", metavar="PATH", help="write the estimated bias field here")
    add_run_options(p)
    add_evaluation_options(p)
    _add_report_options(p)
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser("metrics", help="metrics of an image (against a reference when given)")
    p.add_argument("--image", required=True, metavar="PATH")
    p.add_argument("--reference", metavar="PATH")
    p.add_argument("--mask", metavar="PATH")
    p.add_argument("--lesion", metavar="PATH")
    p.add_argument("--proton-only", dest="proton_only", metavar="PATH")
    p.add_argument("--proton-only-contrast", type=finite_number, default=None,
                   help="relative proton contrast of the proton-only structure (for leakage)")
    p.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("demo", help="run methods on the built-in phantom and print a metrics table")
    p.add_argument("--out", default="sodiumdip_demo", help="output folder (default ./sodiumdip_demo)")
    p.add_argument("--methods", default="tv,dtv,dip,dipfusion", help="comma-separated methods")
    p.add_argument("--preset", default="fast")
    p.add_argument("--shape", default="32", help="phantom sodium grid (default 32^3)")
    p.add_argument("--seed", type=bounded_int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    for modname in COMMAND_MODULES:
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            continue
        module.register_commands(sub)
    return parser


def main(argv=None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_INPUT
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"sodiumdip: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("sodiumdip: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as exc:  # noqa: BLE001 - last line of defence: one readable line, exit 1
        import traceback

        if "SODIUMDIP_DEBUG" in __import__("os").environ:
            traceback.print_exc()
        print(f"sodiumdip: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
