"""``sodiumdip compare``: several methods on one case, one report. Also the shared ``--report`` options.

The main CLI (``SodiumDIPLib.apps.cli``) calls ``register_commands(subparsers)``. Other commands that want a
report add ``add_report_options(parser)`` and call ``report_from_args([run, ...], args)`` after their run.
"""

from __future__ import annotations

import math
from pathlib import Path

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.preflight import bounded_int


def add_report_options(p, required: bool = False) -> None:
    """--report DIR, --report-point X,Y,Z and --report-point-space (shared by every command with a report)."""
    p.add_argument("--report", metavar="DIR", required=required,
                   help="write a PNG + self-contained HTML report into DIR" + ("" if required else " (optional)"))
    p.add_argument("--report-point", metavar="X,Y,Z", default=None,
                   help="where the report's three planes cross (default: lesion centroid, else the centre)")
    p.add_argument("--report-point-space", choices=("lps", "ras", "index"), default="lps",
                   help="coordinates of --report-point: lps or ras millimetres, or voxel index i,j,k (default lps)")


def parse_point(text):
    """'x,y,z' -> (x, y, z) floats (None passes through)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(","))
    except ValueError:
        raise InputError(f"--report-point {text!r}: expected three numbers X,Y,Z") from None
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"--report-point {text!r}: expected three finite numbers X,Y,Z")
    if len(values) != 3:
        raise InputError(f"--report-point {text!r}: expected three numbers X,Y,Z, got {len(values)}")
    return values


def check_report_folder(folder) -> Path:
    """Refuse, before any long run, a report folder that cannot be created or written."""
    from SodiumDIPLib.data.preflight import can_create_in

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--report {folder}: an existing file; expected a folder")
    parent = folder.parent if str(folder.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not can_create_in(parent):  # os.access says yes to root everywhere
        raise InputError(f"--report {folder}: folder {parent} is not writable")
    return folder


def plan_report(plan, args) -> None:
    """Add --report (a folder and the report's file names) to a pre-flight ``Plan``; parse --report-point now."""
    if not getattr(args, "report", None):
        if getattr(args, "report_point", None) is not None:
            raise InputError("--report-point without --report; add --report DIR or drop the point")
        return
    from SodiumDIPLib.apps.report import REPORT_FILES

    parse_point(getattr(args, "report_point", None))
    plan.add_folder("--report", args.report, list(REPORT_FILES.values()))


def check_report_point(args, grid) -> None:
    """Refuse, right after the inputs are read and before the run, a --report-point outside ``grid``."""
    point = parse_point(getattr(args, "report_point", None))
    if point is None or not getattr(args, "report", None):
        return
    from SodiumDIPLib.apps.report.views import point_to_index

    point_to_index(grid, point, getattr(args, "report_point_space", "lps"))


def stage_report_from_args(staging, runs, args, title=None):
    """Render the report asked for by --report into ``staging`` (None when not asked)."""
    if not getattr(args, "report", None):
        return None
    from SodiumDIPLib.apps.report import stage_report

    return stage_report(staging, runs, args.report, point=parse_point(getattr(args, "report_point", None)),
                        point_space=getattr(args, "report_point_space", "lps"), title=title)


def report_from_args(runs, args):
    """Write the report asked for by --report (None when not asked). Returns make_report's paths."""
    if not getattr(args, "report", None):
        return None
    from SodiumDIPLib.apps.report import make_report

    return make_report(runs, args.report, point=parse_point(getattr(args, "report_point", None)),
                       point_space=getattr(args, "report_point_space", "lps"))


def cmd_compare(args) -> int:
    from SodiumDIPLib.apps.console import progress_printer, read_run_volumes
    from SodiumDIPLib.methods import get_method
    from SodiumDIPLib.pipeline import denoise_volumes, detached_data_files, output_files, resolve_device, stage_outputs
    from SodiumDIPLib.data.preflight import Plan, check_seed, check_text, run_parameters
    from SodiumDIPLib.data.safewrite import Staging

    methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    if not methods:
        raise InputError("--methods: expected a comma-separated list of method names, e.g. tv,dtv,dipfusion")
    if len(set(methods)) != len(methods):
        raise InputError(f"--methods {args.methods!r} names a method twice")
    # everything the user can get wrong is checked before the first (long) run
    specs = [get_method(check_text(m, "--methods")) for m in methods]
    params = {spec.name: run_parameters(spec, args.preset, {}) for spec in specs}
    args.seed = check_seed(args.seed)
    resolve_device(check_text(args.device, "--device"))
    plan = Plan()
    inputs = {"sodium": args.sodium, "proton": args.proton, "reference": args.reference, "mask": args.mask,
              "lesion": args.lesion, "proton-only": args.proton_only}
    for role, path in inputs.items():
        plan.add_input(role, path)
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None:
        plan.add_folder("--output-dir", out_dir)
        for m in methods:
            for role, path in output_files(out_dir / f"{m}.nrrd", out_dir / f"{m}_bias.nrrd",
                                           out_dir / f"{m}.metrics.json").items():
                plan.add_output(f"--output-dir {role}", path, detached_data_files(path))
    plan_report(plan, args)
    plan.check()
    for spec in specs:
        spec.check_inputs(has_proton=args.proton is not None)
    volumes = read_run_volumes(args)  # keyword arguments of denoise_volumes
    check_report_point(args, volumes["sodium"])

    runs = []
    for spec in specs:
        on_progress, close = progress_printer(args, params[spec.name].get("iterations"))
        try:
            run = denoise_volumes(**volumes, method=spec.name, preset=args.preset, seed=args.seed,
                                  device=args.device, on_progress=on_progress)
        finally:
            close()
        runs.append(run)
        print(f"{spec.name:12s} {run.iterations:5d} it  stop {run.stop_rule} @ {run.stop_iteration}  "
              f"{run.seconds:7.1f} s  peak {run.peak_memory_mb:.0f} MB", flush=True)
    with Staging() as staging:  # every result and the report, all-or-nothing
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            for run in runs:
                stage_outputs(staging, run, out_dir / f"{run.method}.nrrd",
                              bias_field_path=out_dir / f"{run.method}_bias.nrrd" if run.bias_field is not None else None,
                              metrics_json=out_dir / f"{run.method}.metrics.json")
        paths = stage_report_from_args(staging, runs, args, title=args.title)
        staging.commit()
    print(comparison_table(runs))
    print(f"wrote report: {paths['html']}")
    return 0


def comparison_table(runs) -> str:
    """Plain-text table: one row per run, the numeric metrics every run has as columns."""
    from SodiumDIPLib.apps.report.figures import format_value, metric_names

    names = [k for k in metric_names(runs)
             if all(isinstance((r.metrics or {}).get(k), (int, float)) for r in runs)]
    cols = ["seconds"] + names
    width = max([12] + [len(c) for c in cols]) + 1
    lines = ["method".ljust(14) + "".join(c.rjust(width) for c in cols)]
    for r in runs:
        vals = [r.seconds] + [r.metrics[k] for k in names]
        lines.append(str(r.method)[:13].ljust(14) + "".join(format_value(v).rjust(width) for v in vals))
    return "\n".join(lines)


def register_commands(subparsers) -> None:
    """Add ``compare`` to the ``sodiumdip`` command line."""
    p = subparsers.add_parser("compare", help="run several methods on one case and write one report",
                              description="Denoise one sodium volume with several methods (same seed, same "
                                          "device) and write a side-by-side PNG + HTML report.")
    p.add_argument("--sodium", required=True, metavar="PATH", help="sodium volume (NIfTI, NRRD, MHA, DICOM folder)")
    p.add_argument("--proton", metavar="PATH", help="registered proton volume (any grid; resampled by geometry)")
    p.add_argument("--methods", required=True, metavar="A,B,C", help="comma-separated methods (see `sodiumdip methods`)")
    p.add_argument("--preset", default="balanced", help="fast | balanced | quality, for every method (default balanced)")
    p.add_argument("--seed", type=bounded_int, default=0, help="random seed, the same for every method (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--reference", metavar="PATH", help="reference volume: PSNR/SSIM/... and |error| panels")
    p.add_argument("--mask", metavar="PATH", help="object mask (default: estimated head mask)")
    p.add_argument("--lesion", metavar="PATH", help="lesion mask: contrast recovery; the report centres on it")
    p.add_argument("--proton-only", dest="proton_only", metavar="PATH", help="proton-only structure mask (leakage)")
    p.add_argument("--output-dir", metavar="DIR", help="also write each result (and bias field, metrics) here")
    p.add_argument("--title", default=None, help="report title (default names the methods)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_report_options(p, required=True)
    p.set_defaults(func=cmd_compare)
