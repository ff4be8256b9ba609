"""``sodiumdip compare``: several methods on one case, one report. Also the shared ``--report`` options.

The main CLI (``SodiumDIPLib.cli``) calls ``register_commands(subparsers)``. Other commands that want a
report add ``add_report_options(parser)`` and call ``report_from_args([run, ...], args)`` after their run.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError


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
    if len(values) != 3:
        raise InputError(f"--report-point {text!r}: expected three numbers X,Y,Z, got {len(values)}")
    return values


def check_report_folder(folder) -> Path:
    """Refuse, before any long run, a report folder that cannot be created or written."""
    from ..io import can_create_in

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--report {folder}: an existing file; expected a folder")
    parent = folder.parent if str(folder.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not can_create_in(parent):  # os.access says yes to root everywhere
        raise InputError(f"--report {folder}: folder {parent} is not writable")
    return folder


def report_from_args(runs, args):
    """Write the report asked for by --report (None when not asked). Returns make_report's paths."""
    if not getattr(args, "report", None):
        return None
    from . import make_report

    return make_report(runs, args.report, point=parse_point(getattr(args, "report_point", None)),
                       point_space=getattr(args, "report_point_space", "lps"))


def cmd_compare(args) -> int:
    from ..cli import progress_printer, read_optional
    from ..io import read_volume
    from ..methods import get_method
    from ..pipeline import denoise_volumes

    methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    if not methods:
        raise InputError("--methods: expected a comma-separated list of method names, e.g. tv,dtv,dipfusion")
    if len(set(methods)) != len(methods):
        raise InputError(f"--methods {args.methods!r} names a method twice")
    # everything the user can get wrong is checked before the first (long) run
    specs = [get_method(m) for m in methods]
    for spec in specs:
        spec.parameters(args.preset)
    check_report_folder(args.report)
    point = parse_point(args.report_point)
    sodium = read_volume(args.sodium, "sodium")
    proton = read_optional(args.proton, "proton")
    for spec in specs:
        if spec.needs_proton and proton is None:
            raise InputError(f"method {spec.name!r} needs a proton volume (--proton)")
    reference = read_optional(args.reference, "reference")
    mask = read_optional(args.mask, "mask")
    lesion = read_optional(args.lesion, "lesion")
    ponly = read_optional(args.proton_only, "proton-only")
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--output-dir {out_dir}: an existing file; expected a folder")

    runs = []
    for spec in specs:
        on_progress, close = progress_printer(args, spec.parameters(args.preset).get("iterations"))
        try:
            run = denoise_volumes(sodium, proton, method=spec.name, preset=args.preset, seed=args.seed,
                                  device=args.device, reference=reference, mask=mask, lesion=lesion,
                                  proton_only=ponly, on_progress=on_progress)
        finally:
            close()
        runs.append(run)
        print(f"{spec.name:12s} {run.iterations:5d} it  stop {run.stop_rule} @ {run.stop_iteration}  "
              f"{run.seconds:7.1f} s  peak {run.peak_memory_mb:.0f} MB", flush=True)
    if out_dir is not None:
        from ..pipeline import write_outputs

        out_dir.mkdir(parents=True, exist_ok=True)
        for run in runs:
            write_outputs(run, out_dir / f"{run.method}.nrrd",
                          bias_field_path=out_dir / f"{run.method}_bias.nrrd" if run.bias_field is not None else None,
                          metrics_json=out_dir / f"{run.method}.metrics.json")
    from . import make_report

    paths = make_report(runs, args.report, point=point, point_space=args.report_point_space, title=args.title)
    print(comparison_table(runs))
    print(f"wrote report: {paths['html']}")
    return 0


def comparison_table(runs) -> str:
    """Plain-text table: one row per run, the numeric metrics every run has as columns."""
    from .figures import format_value, metric_names

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
    p.add_argument("--seed", type=int, default=0, help="random seed, the same for every method (default 0)")
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
