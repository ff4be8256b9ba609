"""``sodiumdip benchmark``: every method, same seed, one run, on the built-in head phantom and the real 7 T pair.

Phantom: PSNR / SSIM / NRMSE inside the brain mask, lesion CRC and proton leakage against the phantom truth,
plus iterations, stopping rule, seconds, peak memory and per-iteration curves (loss; PSNR inside the object
support, normalised units, for monitoring only -- never used to choose an output).

Real data (``--data`` = the uhf23na folder): denoise c2p_naa_6 guided by gre_2 (resampled onto the sodium
grid); evaluate against the independent repeat c2p_naa_8 with sigma^2 = mean((naa_6 - naa_8)^2) / 2 in the
head mask and the unbiased error estimate mean((x - naa_8)^2) - sigma^2 (x = b * image for methods that
return a bias field b: the repeat carries the same receive bias, so the bias-corrected image is compared
after re-applying its own bias estimate); gain over the input in dB; the
estimated bias field's Pearson correlation (head mask) with smooth(naa_6) / smooth(nav_7).

Suite (``--suite [fast|core|tuning|held-out|full]``): every method on a list of cases (built-in head and breast,
MNI152 atlas brains, the real pair), one table: ``SodiumDIPLib.apps.suite``.

Speed (``--speed``): plain DIP with the original paper's defaults (skip net, 5 x 128 channels, Adam 1e-2,
input noise 0.1, perturbation 1/30, EMA 0.99) runs for a time budget; its best PSNR is the target; DIP-Fusion
(chosen preset) runs in the same process; the ratio of times to reach the target is reported.
Timings on a shared machine are noisy: the JSON records the device and thread count with them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from SodiumDIPLib.apps.cases import DEFAULT_METHODS, available, pick_metrics, real_pair
from SodiumDIPLib.data.io import json_ready
from SodiumDIPLib.errors import InputError

ORIGINAL_DIP = dict(channels="128,128,128,128,128", skip_channels="4,4,4,4,4", input_channels=32, input_scale=0.1,
                    output_init=False, reg_noise_std=1.0 / 30, lr=0.01, lr_schedule="none", ema=0.99,
                    precision="fp32", stopping="fixed")


def _curves(history):
    return {"loss": [h.get("loss") for h in history],
            **({"psnr_support": [h.get("psnr") for h in history]} if history and "psnr" in history[0] else {})}


def _trajectory(result) -> dict:
    """Where the stopping rule landed relative to the best PSNR along the run (monitoring only)."""
    ps = [h["psnr"] for h in result.history if "psnr" in h]
    if not ps:
        return {}
    best = int(np.argmax(ps))
    at = min(int(result.stop_iteration), len(ps) - 1)
    return {"best_psnr_support": float(ps[best]), "best_iteration": best, "psnr_support_at_stop": float(ps[at]),
            "gap_to_best_db": float(ps[best] - ps[at])}


def phantom_case(shape=(48, 48, 48), seed: int = 0):
    """The built-in head phantom at its default noise, as (case, problem, scale)."""
    from SodiumDIPLib.data.phantom import make_phantom
    from SodiumDIPLib.pipeline import prepare_denoising

    case = make_phantom("head", seed=seed, shape=tuple(shape))
    problem, scale, _ = prepare_denoising(case.sodium, case.proton, reference=case.sodium_truth, mask=case.support,
                                          noise_sigma=case.noise_sigma)
    return case, problem, scale


def run_phantom(methods, preset="fast", seed=0, device="auto", shape=(48, 48, 48), params=None,
                verbose=True, runs: Optional[list] = None) -> dict:
    """Run ``methods`` on the head phantom; returns {method: record}. ``params``: {method: overrides}.

    runs: when a list is given, each method's result is appended to it as a pipeline.RunOutput (for reports).
    """
    from SodiumDIPLib.metrics.quality import compute_metrics
    from SodiumDIPLib.pipeline import run_method

    case, problem, scale = phantom_case(shape, seed)
    truth = case.sodium_truth.array
    squeeze = lambda a: np.asarray(a)  # noqa: E731  (2D phantoms are already 2D arrays)
    brain = squeeze(case.brain.array).astype(bool)
    rows = {}
    inp = compute_metrics(squeeze(case.sodium.array), reference=truth, mask=brain, lesion=case.lesion.array,
                          proton_only=case.proton_only.array, proton_only_contrast=case.proton_only_contrast)
    rows["input"] = {"metrics": pick_metrics(inp)}
    for name in methods:
        result, info = run_method(problem, name, preset, (params or {}).get(name), seed, device)
        x = np.asarray(result.image, np.float32) * scale
        m = compute_metrics(x, reference=truth, mask=brain, lesion=case.lesion.array,
                            proton_only=case.proton_only.array, proton_only_contrast=case.proton_only_contrast)
        rec = {"metrics": pick_metrics(m), "iterations": result.iterations, "stop_rule": result.stop_rule,
               "stop_iteration": result.stop_iteration, "seconds": info["seconds"],
               "peak_memory_mb": info["peak_memory_mb"], "device": info["device"],
               "iterations_per_second": result.iterations / info["seconds"] if info["seconds"] > 0 else None,
               "trajectory": _trajectory(result), "curves": _curves(result.history), "params": result.params}
        if result.bias_field is not None:
            tb, sup = case.bias_field.array, case.support.array.astype(bool)
            rec["bias_corr_truth"] = float(np.corrcoef(result.bias_field[sup], tb[sup])[0, 1])
        rows[name] = rec
        if runs is not None:
            runs.append(_run_output(case, problem, scale, result, info, m))
        if verbose:
            print(f"  phantom {name}: psnr {rec['metrics'].get('psnr_mask', float('nan')):.2f} dB, "
                  f"{info['seconds']:.1f} s", flush=True)
    return rows


def _run_output(case, problem, scale, result, info, metrics):
    """A benchmark result as the pipeline's RunOutput, with the phantom's volumes as inputs (for reports)."""
    from SodiumDIPLib.pipeline import run_output

    grid = case.sodium
    inputs = {"sodium": grid, "reference": case.sodium_truth, "mask": case.brain, "lesion": case.lesion,
              "proton_only": case.proton_only}
    if problem.proton is not None:
        inputs["proton_on_grid"] = grid.with_array(np.asarray(problem.proton, np.float32))
    return run_output(result, info, grid, scale, inputs, metrics=metrics)


def run_real(data_dir, methods, preset="fast", seed=0, device="auto", params=None, verbose=True) -> dict:
    """The 7 T pair: denoise naa_6 guided by gre_2, evaluate against naa_8 (see module docstring)."""
    from SodiumDIPLib.pipeline import run_method

    pair = real_pair(data_dir)
    rows = {"input": {"mse_estimate": pair.input_error, "sigma2": pair.sigma2}}
    for name in methods:
        result, info = run_method(pair.problem, name, preset, (params or {}).get(name), seed, device)
        rec = pair.score(result)
        rec.update({"iterations": result.iterations, "stop_rule": result.stop_rule,
                    "stop_iteration": result.stop_iteration, "seconds": info["seconds"],
                    "peak_memory_mb": info["peak_memory_mb"],
                    "iterations_per_second": result.iterations / info["seconds"] if info["seconds"] > 0 else None,
                    "curves": _curves(result.history), "params": result.params})
        rows[name] = rec
        if verbose:
            print(f"  real {name}: mse estimate {rec['mse_estimate']:.1f} (input {pair.input_error:.1f}), "
                  f"{info['seconds']:.1f} s", flush=True)
    return rows


def run_speed(preset="fast", seed=0, device="auto", shape=(32, 32, 32), budget_s=300.0, verbose=True,
              params: Optional[dict] = None) -> dict:
    """Time for DIP-Fusion to reach the best PSNR that original-defaults plain DIP reaches within ``budget_s``."""
    from SodiumDIPLib.methods import RunContext, get_method
    from SodiumDIPLib.pipeline import resolve_device

    dev = resolve_device(device)
    case, problem, scale = phantom_case(shape, seed)
    out = {}
    for label, method, overrides, limit in (("dip_original", "dip", dict(ORIGINAL_DIP, iterations=100000), budget_s),
                                            ("dipfusion", "dipfusion", (params or {}).get("dipfusion", {}), None)):
        spec = get_method(method)
        p = spec.parameters(preset, overrides)
        started = time.perf_counter()
        ctx = RunContext(dev, seed, should_cancel=(lambda s=started, lim=limit:
                                                   lim is not None and time.perf_counter() - s > lim))
        res = spec.run(problem, p, ctx)
        total = time.perf_counter() - started
        ps = [h["psnr"] for h in res.history]
        # the history's clock starts at the first iteration: add what came before it (network set-up, and
        # DIP-Fusion's classical pilot) so both curves count from the call
        offset = total - res.history[-1]["seconds"] if res.history else 0.0
        ts = [h["seconds"] + offset for h in res.history]
        out[label] = {"iterations": res.iterations, "seconds": total,
                      "best_psnr_support": float(max(ps)), "psnr_support": ps, "seconds_curve": ts}
        if verbose:
            print(f"  speed {label}: {res.iterations} iterations, best {max(ps):.2f} dB", flush=True)
    target = out["dip_original"]["best_psnr_support"]
    t_dip = out["dip_original"]["seconds_curve"][int(np.argmax(out["dip_original"]["psnr_support"]))]
    fus = out["dipfusion"]
    reached = [t for p, t in zip(fus["psnr_support"], fus["seconds_curve"]) if p >= target]
    out["target_psnr_support"] = target
    out["dip_original_seconds_to_best"] = t_dip
    out["dipfusion_seconds_to_target"] = reached[0] if reached else None
    out["speedup"] = (t_dip / reached[0]) if reached else None
    out["note"] = ("plain DIP (original defaults) stopped by the time budget; its best PSNR within the budget is "
                   "the target" if out["dip_original"]["seconds"] >= budget_s else "")
    return out


def run_benchmark(methods=None, data=None, preset: str = "fast", seed: int = 0, device: str = "auto",
                  shape=(48, 48, 48), speed: bool = False, speed_shape=(32, 32, 32),
                  speed_budget_s: float = 300.0, params: Optional[dict] = None, verbose: bool = True,
                  runs: Optional[list] = None) -> dict:
    """Every method on the phantom (and the real pair when ``data`` is a folder); returns a JSON-ready dict.

    For quality against acceleration see SodiumDIPLib.apps.acceleration (``sodiumdip benchmark --acceleration``).
    """
    names, skipped = available(list(methods) if methods else list(DEFAULT_METHODS))
    report = {"preset": preset, "seed": seed, "device": device, "threads": torch.get_num_threads(),
              "methods": names, "skipped": skipped, "phantom_shape": list(shape)}
    report["phantom"] = run_phantom(names, preset, seed, device, shape, params, verbose, runs=runs)
    if data:
        report["real"] = run_real(data, names, preset, seed, device, params, verbose)
    if speed:
        report["speed"] = run_speed(preset, seed, device, speed_shape, speed_budget_s, verbose, params)
    return json_ready(report)


def format_table(report: dict) -> str:
    lines = [f"phantom {report.get('phantom_shape')} preset {report['preset']} seed {report['seed']}",
             f"{'method':<10} {'PSNR':>7} {'SSIM':>6} {'NRMSE':>6} {'CRC':>6} {'leak':>6} {'iters':>6} "
             f"{'stop':<12} {'sec':>7} {'MB':>7}"]
    fmt = lambda v, f: (f % v) if isinstance(v, (int, float)) else "-"  # noqa: E731
    for name, r in report["phantom"].items():
        m = r["metrics"]
        lines.append(f"{name:<10} {fmt(m.get('psnr_mask'), '%7.2f')} {fmt(m.get('ssim_mask'), '%6.3f')} "
                     f"{fmt(m.get('nrmse_mask'), '%6.3f')} {fmt(m.get('lesion_crc'), '%6.3f')} "
                     f"{fmt(m.get('proton_leakage'), '%6.3f')} {fmt(r.get('iterations'), '%6d')} "
                     f"{str(r.get('stop_rule', '-')):<12} {fmt(r.get('seconds'), '%7.1f')} "
                     f"{fmt(r.get('peak_memory_mb'), '%7.0f')}")
    if "real" in report:
        lines.append("real 7 T pair (naa_6 guided by gre_2, evaluated against naa_8)")
        lines.append(f"{'method':<10} {'MSE est':>9} {'gain dB':>8} {'bias r':>7} {'sec':>7}")
        for name, r in report["real"].items():
            lines.append(f"{name:<10} {fmt(r.get('mse_estimate'), '%9.1f')} {fmt(r.get('gain_db'), '%8.2f')} "
                         f"{fmt(r.get('bias_corr_measured'), '%7.3f')} {fmt(r.get('seconds'), '%7.1f')}")
    if "speed" in report:
        s = report["speed"]
        lines.append(f"speed: original DIP best {fmt(s['target_psnr_support'], '%.2f')} dB after "
                     f"{fmt(s['dip_original_seconds_to_best'], '%.1f')} s; DIP-Fusion reached it after "
                     f"{fmt(s['dipfusion_seconds_to_target'], '%.1f')} s; speed-up {fmt(s['speedup'], '%.1f')}x")
    return "\n".join(lines)


def _shape(text: str):
    parts = [int(p) for p in str(text).lower().replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) not in (2, 3) or min(parts) < 8:
        raise InputError(f"--shape expects N, NxN or NxNxN with N >= 8, got {text!r}")
    return tuple(parts)


def _params_file(path) -> Optional[dict]:
    """``--params FILE``: a JSON object {method: {parameter: value}} (None without the option)."""
    if not path:
        return None
    try:
        params = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--params {path}: cannot read a JSON object of method -> overrides ({exc})") from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise InputError(f"--params {path}: expected a JSON object {{method: {{parameter: value}}}}")
    return params


def cmd_acceleration(args, methods) -> int:
    """`benchmark --acceleration R,R,...`: quality against R for every method on the phantom's k-space."""
    from SodiumDIPLib.apps.acceleration import DEFAULT_FACTORS, format_acceleration_table, run_acceleration_benchmark

    text = args.acceleration.strip()
    try:
        factors = DEFAULT_FACTORS if text in ("", "all") else tuple(float(r) for r in text.split(","))
    except ValueError:
        raise InputError(f"--acceleration {text!r}: expected factors like 2,3,4,6,8") from None
    shape = _shape(args.shape)
    if args.kspace_kind == "cartesian" and "gridding" in (methods or ()):
        raise InputError("gridding is the radial floor; use zero-filled with --kspace-kind cartesian")
    result = run_acceleration_benchmark(
        methods=methods or ("zero-filled", "tv", "dtv", "dip", "dipfusion"), factors=factors, shape=shape,
        n_coils=args.coils, kind=args.kspace_kind, preset=args.preset, seed=args.seed, device=args.device,
        params=_params_file(args.params),
        on_row=None if args.quiet else (lambda row: print(f"  R={row['R']:g} {row['method']}: "
                                                           f"{row['psnr_mask']:.2f} dB, {row['seconds']:.1f} s",
                                                           flush=True)))
    print(format_acceleration_table(result))
    print(format_acceleration_table(result, "ssim_mask"))
    if args.json:
        from SodiumDIPLib.data.io import write_text_atomic

        write_text_atomic(json.dumps(json_ready(result), indent=1), args.json)
    return 0


def add_suite_arguments(parser) -> None:
    """``--suite [NAME]`` on the benchmark command (fast, tuning, held-out, full; see SodiumDIPLib.apps.suite)."""
    parser.add_argument("--suite", nargs="?", const="fast", default=None, metavar="NAME",
                        help="validation suite: every method on a list of cases, one table "
                             "(fast = CI-sized, tuning, held-out, full; default fast)")


def run_suite_from_args(args, methods) -> int:
    from SodiumDIPLib.apps.suite import format_suite_table, run_suite

    def progress(case, name, row):
        score = row.get("psnr") if row.get("psnr") is not None else row.get("gain_db")
        if not args.quiet and name != "input":
            print(f"  {case.name} {name}: {score if score is None else round(score, 2)}, "
                  f"{row.get('seconds') or 0:.1f} s", flush=True)

    report = run_suite(args.suite, methods, args.preset, args.seed, args.device, _params_file(args.params),
                       args.data, progress)
    print(format_suite_table(report))
    if args.json:
        from SodiumDIPLib.data.io import write_text_atomic

        write_text_atomic(json.dumps(json_ready(report), indent=1), args.json)
    return 0


def check_outputs(args) -> None:
    """Pre-flight of a benchmark: --seed, the --params file, the --json file and the --report folder (legal,
    writable, no output an input), before the (long) runs."""
    from SodiumDIPLib.data.preflight import Plan, check_seed
    from SodiumDIPLib.apps.report.cli import plan_report

    args.seed = check_seed(args.seed)
    plan = Plan()
    plan.add_input("--params file", getattr(args, "params", None))
    plan.add_output("--json", getattr(args, "json", None))
    plan_report(plan, args)
    plan.check()


def cmd_benchmark(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    check_outputs(args)
    if getattr(args, "suite", None):
        return run_suite_from_args(args, methods)
    if args.acceleration is not None:
        return cmd_acceleration(args, methods)
    params = _params_file(args.params)
    runs = [] if args.report else None
    report = run_benchmark(methods, args.data, args.preset, args.seed, args.device, shape=_shape(args.shape),
                           speed=args.speed, speed_shape=_shape(args.speed_shape), speed_budget_s=args.speed_budget,
                           params=params, verbose=not args.quiet, runs=runs)
    print(format_table(report))
    if runs:
        from SodiumDIPLib.apps.cli import report_paths

        print(f"wrote report: {report_paths(runs, args)}")
    if args.json:
        from SodiumDIPLib.data.io import write_text_atomic

        write_text_atomic(json.dumps(report, indent=1), args.json)
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("benchmark", help="every method on the built-in phantom (and the real 7 T pair): "
                                                "quality, iterations, time, memory")
    p.add_argument("--data", metavar="DIR", help="the uhf23na folder (c2p_naa_6/8, c2p_nav_7, gre_2)")
    p.add_argument("--methods", default=None, help=f"comma-separated (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--preset", default="fast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--shape", default="48", help="phantom grid: N, NxN (2D slice) or NxNxN (default 48)")
    p.add_argument("--speed", action="store_true", help="also time DIP-Fusion against original-defaults DIP")
    p.add_argument("--speed-shape", dest="speed_shape", default="32")
    p.add_argument("--speed-budget", dest="speed_budget", type=float, default=300.0,
                   help="seconds the original-defaults DIP may run (default 300)")
    p.add_argument("--params", metavar="PATH", help="JSON {method: {parameter: value}} overriding presets")
    p.add_argument("--acceleration", nargs="?", const="all", default=None, metavar="R,R,...",
                   help="k-space mode: reconstruct the phantom's multi-coil k-space at these factors "
                        "(default 2,3,4,6,8) and print quality against R")
    p.add_argument("--coils", type=int, default=4, help="coils simulated in --acceleration mode (default 4)")
    p.add_argument("--kspace-kind", dest="kspace_kind", default="cartesian", choices=("cartesian", "radial"))
    p.add_argument("--json", metavar="PATH", help="write the full report (with curves) as JSON")
    p.add_argument("--quiet", action="store_true")
    add_suite_arguments(p)
    from SodiumDIPLib.apps.report.cli import add_report_options

    add_report_options(p)  # --report DIR: the phantom runs side by side (not used with --acceleration)
    p.set_defaults(func=cmd_benchmark)
