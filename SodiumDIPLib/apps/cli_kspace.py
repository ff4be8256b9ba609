"""``sodiumdip undersample`` and ``sodiumdip reconstruct``: accelerated acquisitions from the command line.

undersample:  fully sampled multi-coil k-space (.npz/.npy/ISMRMRD) -> a case folder: kspace.npz (undersampled
              k-space with its mask or trajectory and geometry), reference.<fmt> (coil-combined full data),
              mask.<fmt> (Cartesian sampling mask) and case.json.
reconstruct:  multi-coil k-space -> an image with geometry, by any k-space capable method (same options as
              denoise), with metrics against --reference when given.
2D k-space gives a one-slice 3D volume (k = 1) so that its geometry is complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.preflight import bounded_int, finite_number
from SodiumDIPLib.data.volume import Volume

FORMATS = ("nrrd", "nii.gz")


def register_commands(subparsers) -> None:
    from SodiumDIPLib.apps.cli import add_evaluation_options, add_run_options

    p = subparsers.add_parser("undersample", help="make an accelerated case from fully sampled multi-coil k-space")
    p.add_argument("--input", required=True, metavar="PATH", help="full k-space: .npz/.npy (key 'kspace') or ISMRMRD .h5")
    p.add_argument("--out", required=True, metavar="DIR", help="case folder to write (created if needed)")
    p.add_argument("--acceleration", "-R", required=True, type=finite_number, help="acceleration factor R >= 1 (2, 3, 4, 6, 8)")
    p.add_argument("--seed", type=bounded_int, default=0, help="sampling pattern seed (same seed = same pattern)")
    p.add_argument("--calibration", type=bounded_int, default=None, help="fully sampled centre, lines per phase-encode axis (default 12%% of the phase encodes, at least 4)")
    p.add_argument("--combine", default="walsh", choices=("walsh", "sos"), help="coil combination of the reference")
    p.add_argument("--ordering", default="golden", help="radial spoke ordering of the input (golden: contiguous subset)")
    p.add_argument("--spacing", default=None, help="voxel size in mm 'x,y[,z]' when the file has none (default 1)")
    p.add_argument("--format", default="nrrd", choices=FORMATS)
    p.set_defaults(func=cmd_undersample)

    p = subparsers.add_parser("reconstruct", help="reconstruct an image from (undersampled) multi-coil k-space")
    p.add_argument("--input", required=True, metavar="PATH", help="k-space .npz/.npy/ISMRMRD (e.g. an undersample case's kspace.npz)")
    p.add_argument("--output", required=True, metavar="PATH", help="image to write (.nii.gz, .nrrd, .mha)")
    p.add_argument("--proton", metavar="PATH", help="registered proton volume (any grid; resampled by geometry)")
    p.add_argument("--bias-field", metavar="PATH", help="write the estimated bias field here")
    p.add_argument("--combine", default="walsh", choices=("walsh", "sos"),
                   help="how coil sensitivities are estimated from the calibration region (default walsh)")
    p.add_argument("--kernel", type=bounded_int, default=5, help="Walsh box size in voxels (default 5)")
    p.add_argument("--noise-sigma", type=finite_number, default=None, help="k-space noise std (default: from the periphery)")
    p.add_argument("--spacing", default=None, help="voxel size in mm 'x,y[,z]' when the file has none (default 1)")
    add_run_options(p, default_method="dipfusion")
    add_evaluation_options(p)
    from SodiumDIPLib.apps.report.cli import add_report_options

    add_report_options(p)
    p.set_defaults(func=cmd_reconstruct)


# ----------------------------------------------------------------------------------------------- helpers
def _spacing_arg(text, ndim):
    if text is None:
        return None
    try:
        sp = tuple(float(v) for v in str(text).replace("x", ",").split(",") if v)
    except ValueError:
        raise InputError(f"--spacing {text!r}: expected {ndim} numbers in mm, e.g. 4,4" + (",4" if ndim == 3 else "")) from None
    if len(sp) != ndim or any(not np.isfinite(s) or s <= 0 for s in sp):
        raise InputError(f"--spacing {text!r}: expected {ndim} positive numbers in mm (x, y{', z' if ndim == 3 else ''})")
    from SodiumDIPLib.data.headers import check_spacing

    check_spacing(sp, "--spacing", repr(text))
    return sp


def _check_spacing_text(text) -> None:
    """--spacing checked before the data is read (its number of values is checked once the data is known)."""
    if text is not None:
        _spacing_arg(text, len([v for v in str(text).replace("x", ",").split(",") if v]) or 1)


def grid_volume(raw, spacing_override=None) -> Volume:
    """The reconstruction grid as a 3D Volume (one slice for 2D data) with the raw data's geometry.

    Without geometry in the file: the given (or 1 mm) spacing, identity direction, and the origin placed so that
    the k-space centre voxel (index N//2) sits at the physical origin.
    """
    shape = tuple(raw.image_shape)
    shape3 = shape if len(shape) == 3 else (1,) + shape
    sp = spacing_override or raw.spacing or (1.0,) * len(shape)
    sp3 = tuple(sp) + (1.0,) * (3 - len(sp))
    direction = raw.direction if raw.direction is not None else np.eye(3)
    if raw.origin is not None and spacing_override is None:
        origin = raw.origin
    else:
        centre = np.asarray([shape3[2] // 2, shape3[1] // 2, shape3[0] // 2], float)
        origin = tuple(-(np.asarray(direction) @ (np.asarray(sp3) * centre)))
    return Volume(np.zeros(shape3, np.float32), sp3, origin, direction)


# ----------------------------------------------------------------------------------------------- undersample
def undersample_outputs(out: Path, fmt: str) -> dict:
    """The files ``undersample`` writes into its case folder, by role."""
    return {"kspace": out / "kspace.npz", "reference": out / f"reference.{fmt}", "mask": out / f"mask.{fmt}",
            "case": out / "case.json"}


def cmd_undersample(args) -> int:
    from SodiumDIPLib.data.io import json_default, stage_text, stage_volume
    from SodiumDIPLib.physics.kspace import undersample_case
    from SodiumDIPLib.data.preflight import Plan, check_seed
    from SodiumDIPLib.physics.rawio import RawData, read_raw, write_raw_npz
    from SodiumDIPLib.data.safewrite import Staging
    from SodiumDIPLib.physics.sampling import _check_r

    _check_r(args.acceleration)  # before reading anything
    check_seed(args.seed)
    if args.calibration is not None and not 1 <= args.calibration <= 4096:
        raise InputError(f"--calibration {args.calibration}: expected a number of lines in 1..4096")
    _check_spacing_text(args.spacing)
    out = Path(args.out)
    targets = undersample_outputs(out, args.format)
    plan = Plan()
    plan.add_input("raw-data", args.input)
    plan.add_folder("--out", out, [p.name for p in targets.values()])
    for role, path in targets.items():
        plan.add_output(f"--out {role}", path)
    plan.check()
    raw = read_raw(args.input)
    if raw.domain != "kspace":
        raise InputError(f"{args.input}: holds coil images; undersample needs k-space (key 'kspace')")
    spacing = _spacing_arg(args.spacing, raw.ndim)
    grid = grid_volume(raw, spacing)
    case = undersample_case(raw.data, args.acceleration, seed=args.seed, trajectory=raw.trajectory,
                            image_shape=raw.image_shape, mask=raw.mask, calibration=args.calibration,
                            coil_combination=args.combine, ordering=args.ordering)
    ref = case.reference if case.reference.ndim == 3 else case.reference[None]
    under = RawData(case.kspace, "kspace", trajectory=case.trajectory, mask=case.mask, image_shape=case.image_shape,
                    spacing=tuple(grid.spacing[:raw.ndim]), origin=grid.origin, direction=grid.direction, noise=raw.noise)
    out.mkdir(parents=True, exist_ok=True)
    with Staging() as staging:  # every file of the case, all-or-nothing
        paths = {"kspace": write_raw_npz(targets["kspace"], under, staging=staging),
                 "reference": stage_volume(staging, grid.with_array(ref.astype(np.float32)), targets["reference"])}
        if case.mask is not None:
            m = case.mask if case.mask.ndim == 3 else case.mask[None]
            paths["mask"] = stage_volume(staging, grid.with_array(m.astype(np.float32)), targets["mask"])
        record = {"source": str(args.input), "kind": "cartesian" if case.trajectory is None else "radial",
                  "acceleration_requested": case.requested, "acceleration": case.acceleration, "seed": case.seed,
                  "coils": int(case.kspace.shape[0]), "image_shape": list(case.image_shape),
                  "reference_combination": case.combination, "spacing_mm_xyz": list(grid.spacing),
                  "files": {k: Path(v).name for k, v in paths.items()}}
        if case.spokes is not None:
            record["spokes_kept"] = int(len(case.spokes))
        stage_text(staging, json.dumps(record, indent=2, default=json_default),
                   targets["case"])
        staging.commit()
    print(f"undersampled {args.input}: R = {case.acceleration:.2f} (asked {case.requested:g}), seed {case.seed}, "
          f"{record['kind']}, {record['coils']} coils, reference by {case.combination}")
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0


# ----------------------------------------------------------------------------------------------- reconstruct
def cmd_reconstruct(args) -> int:
    from SodiumDIPLib.apps.cli import check_run_request, print_run_summary, write_run
    from SodiumDIPLib.apps.console import progress_printer, read_optional
    from SodiumDIPLib.physics.kspace import kspace_problem
    from SodiumDIPLib.pipeline import on_grid, run_method, run_output
    from SodiumDIPLib.physics.rawio import read_raw

    from SodiumDIPLib.apps.report.cli import check_report_point

    if args.noise_sigma is not None and not args.noise_sigma > 0:
        raise InputError(f"--noise-sigma {args.noise_sigma}: expected a positive number")
    if not 1 <= args.kernel <= 64:
        raise InputError(f"--kernel {args.kernel}: expected a Walsh box size in 1..64 voxels")
    _check_spacing_text(args.spacing)
    inputs = {"raw-data": args.input, "proton": args.proton, "reference": args.reference, "mask": args.mask,
              "lesion": args.lesion, "proton-only": args.proton_only}
    spec, overrides, params = check_run_request(args, inputs)
    spec.check_inputs(has_proton=args.proton is not None, kspace=True)
    raw = read_raw(args.input)
    if raw.domain != "kspace":
        raise InputError(f"{args.input}: holds coil images; reconstruct needs k-space (key 'kspace')")
    grid = grid_volume(raw, _spacing_arg(args.spacing, raw.ndim))
    squeeze = raw.ndim == 2
    sq = (lambda a: None if a is None else (a[0] if squeeze else a))
    proton = read_optional(args.proton, "proton")
    reference = read_optional(args.reference, "reference")
    mask = read_optional(args.mask, "mask")
    lesion = read_optional(args.lesion, "lesion")
    ponly = read_optional(args.proton_only, "proton-only")
    check_report_point(args, grid)
    p = sq(on_grid(proton, grid, "proton", label=False))
    ref = sq(on_grid(reference, grid, "reference", label=False))
    user_mask = sq(on_grid(mask, grid, "mask", label=True))
    les = sq(on_grid(lesion, grid, "lesion", label=True))
    po = sq(on_grid(ponly, grid, "proton-only", label=True))
    spacing = tuple(reversed(grid.spacing))[-raw.ndim:]
    kp = kspace_problem(raw.data, mask=raw.mask if raw.trajectory is None else None, trajectory=raw.trajectory,
                        image_shape=raw.image_shape, proton=p, spacing=spacing, noise_sigma=args.noise_sigma,
                        coil_combination=args.combine, kernel=args.kernel, reference=ref, support=user_mask)
    on_progress, close = progress_printer(args, params.get("iterations"))
    unsq = (lambda a: a[None] if squeeze else a)
    progress = None
    if on_progress is not None:
        def progress(event, image_fn):
            on_progress(event, (lambda: unsq(image_fn() * kp.unit)) if image_fn is not None else None)
    try:
        result, info = run_method(kp.problem, args.method, args.preset, overrides, args.seed, args.device, progress)
    finally:
        close()
    if args.bias_field and result.bias_field is None:
        raise InputError(f"method {args.method!r} does not estimate a bias field; drop --bias-field")
    # the zero-filled / gridding image plays the part of the measured "sodium" input
    inputs = {"sodium": grid.with_array(unsq(kp.problem.initial * kp.unit).astype(np.float32))}
    if ref is not None:
        inputs["reference"] = grid.with_array(unsq(ref).astype(np.float32))
    support = kp.problem.support
    if support is not None:
        inputs["mask"] = grid.with_array(unsq(support).astype(np.uint8))
    if les is not None:
        inputs["lesion"] = grid.with_array(unsq(les).astype(np.uint8))
    if po is not None:
        inputs["proton_only"] = grid.with_array(unsq(po).astype(np.uint8))
    run = run_output(result, info, grid, kp.unit, inputs, magnitude=True)
    kinfo = {"kind": kp.kind, "coils": int(raw.n_coils), "coil_combination": kp.combination,
             "noise_sigma": kp.noise_sigma, "noise_source": kp.noise_source, "scale": kp.scale,
             "acceleration": kp.details.get("acceleration")}
    paths = write_run([run], args, args.output, args.bias_field, args.metrics_json, summary_extra={"kspace": kinfo})
    print(f"k-space: {kp.kind}, {raw.n_coils} coils, sensitivities by {kp.combination}, noise sigma "
          f"{kp.noise_sigma:.4g} ({kp.noise_source})")
    print_run_summary(run, paths)
    return 0
