"""``sodiumdip benchmark --suite NAME``: every method on a list of cases, one table.

Cases (each declared TUNING or HELD-OUT; parameters may be tuned on the tuning split only):
* the built-in head phantom (``phantom.make_phantom``) at SNR 5 / 10 / 20, with and without receive bias,
  one-coil Rician or multi-coil noncentral chi magnitude, single axial slices; the breast variant;
* simulated brains on the MNI152 anatomy (``atlas.make_atlas_brain``; optional extra ``suite``), lesion and
  proton-only structure placed by seed, voxel sizes 3-6 mm, with and without receive bias;
* the real 7 T pair (``--data``): c2p_naa_6 guided by gre_2, scored against the independent repeat c2p_naa_8
  (``cases.real_pair``).

Every case is given to the methods as a user would give it to ``sodiumdip denoise``: the sodium and proton
volumes only (head mask and noise level estimated from the data). Scores with a truth: PSNR / SSIM inside the
brain (breast) mask, lesion CRC, proton leakage; real pair: the repeat-based gain over the input in dB. For
``dipfusion`` the table also gives the gain of the DIP stage over its own classical pilot (same score) and
which stage the safeguard returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from SodiumDIPLib.errors import InputError

TUNING, HELD_OUT = "tuning", "held-out"
DEFAULT_DATA = Path("..") / "shared" / "data" / "uhf23na"


@dataclass(frozen=True)
class SuiteCase:
    """One validation case. ``build`` returns a phantom.PhantomCase; ``real`` marks the repeat pair."""

    name: str
    family: str
    split: str
    build: Optional[Callable] = None
    real: bool = False
    params: dict = field(default_factory=dict)


def _head(kind="head", shape=48, snr=10.0, bias=0.3, coils=1, seed=0):
    def build():
        from SodiumDIPLib.data.atlas import noisy_magnitude
        from SodiumDIPLib.data.phantom import make_phantom

        size = (shape,) * 3 if isinstance(shape, int) else tuple(shape)
        case = make_phantom(kind, seed=seed, shape=size, snr=snr, bias_strength=bias)
        if coils > 1:  # re-draw the noise as an n-coil root-sum-of-squares magnitude (noncentral chi)
            rng = np.random.default_rng(1000 + seed)
            clean = case.sodium_truth.array * case.bias_field.array
            case.sodium = case.sodium.with_array(noisy_magnitude(clean, case.noise_sigma, coils, rng))
        return case
    return build


def _atlas(seed, voxel_mm=4.0, snr=8.0, bias=0.0, coils=1, slice_only=False):
    def build():
        from SodiumDIPLib.data.atlas import make_atlas_brain

        return make_atlas_brain(seed=seed, voxel_mm=voxel_mm, snr=snr, bias_strength=bias, n_coils=coils,
                                slice_only=slice_only)
    return build


def _case(name, family, split, build=None, real=False, **params):
    return SuiteCase(name, family, split, build, real, params)


def suite_cases(name: str) -> list:
    """The cases of suite ``name``: "fast" (CI-sized, two single slices), "core" (six 3D cases of both splits and
    the real pair), "tuning", "held-out" or "full" (= tuning + held-out)."""
    tuning = [
        _case("head48-snr10-bias", "head", TUNING, _head(snr=10, bias=0.3)),
        _case("head48-snr5-nobias", "head", TUNING, _head(snr=5, bias=0.0)),
        _case("breast48-snr10-bias", "breast", TUNING, _head("breast", snr=10, bias=0.3)),
        _case("atlas4mm-s0-snr8-nobias", "atlas", TUNING, _atlas(0, 4.0, 8.0, 0.0)),
        _case("atlas4mm-s1-snr10-bias-chi4", "atlas", TUNING, _atlas(1, 4.0, 10.0, 0.3, coils=4)),
    ]
    held_out = [
        _case("head48-snr5-bias", "head", HELD_OUT, _head(snr=5, bias=0.3, seed=1)),
        _case("head48-snr20-nobias", "head", HELD_OUT, _head(snr=20, bias=0.0, seed=2)),
        _case("head48-snr10-nobias", "head", HELD_OUT, _head(snr=10, bias=0.0, seed=3)),
        _case("head48-snr10-bias-chi8", "head", HELD_OUT, _head(snr=10, bias=0.3, coils=8, seed=4)),
        _case("head-slice64-snr10-bias", "head", HELD_OUT, _head(shape=(64, 64), snr=10, bias=0.3, seed=5)),
        _case("breast48-snr10-nobias", "breast", HELD_OUT, _head("breast", snr=10, bias=0.0, seed=6)),
        _case("atlas5mm-s2-snr8-nobias", "atlas", HELD_OUT, _atlas(2, 5.0, 8.0, 0.0)),
        _case("atlas6mm-s3-snr5-bias", "atlas", HELD_OUT, _atlas(3, 6.0, 5.0, 0.3)),
        _case("atlas4mm-s4-snr15-nobias-chi8", "atlas", HELD_OUT, _atlas(4, 4.0, 15.0, 0.0, coils=8)),
        _case("atlas3mm-s5-snr8-bias", "atlas", HELD_OUT, _atlas(5, 3.0, 8.0, 0.4)),
        _case("atlas-slice3mm-s6-snr8-nobias", "atlas", HELD_OUT, _atlas(6, 3.0, 8.0, 0.0, slice_only=True)),
        _case("real-7T-naa6-vs-naa8", "real", HELD_OUT, real=True),
    ]
    fast = [
        _case("head-slice48-snr10-bias", "head", TUNING, _head(shape=(48, 48), snr=10, bias=0.3)),
        _case("atlas-slice6mm-s7-snr8-nobias", "atlas", HELD_OUT, _atlas(7, 6.0, 8.0, 0.0, slice_only=True)),
    ]
    by_name = {c.name: c for c in tuning + held_out}
    core = [by_name[n] for n in ("atlas4mm-s0-snr8-nobias", "real-7T-naa6-vs-naa8", "head48-snr10-bias",
                                 "atlas5mm-s2-snr8-nobias", "atlas6mm-s3-snr5-bias", "head48-snr10-nobias")]
    suites = {"fast": fast, "core": core, "tuning": tuning, "held-out": held_out, "full": tuning + held_out}
    if name not in suites:
        raise InputError(f"--suite {name!r} is unknown; expected one of {', '.join(suites)}")
    return suites[name]


# ----------------------------------------------------------------------------------------------- scoring
def _truth_scores(x, case) -> dict:
    from SodiumDIPLib.metrics.quality import compute_metrics

    m = compute_metrics(np.asarray(x, np.float32), reference=case.sodium_truth.array, mask=case.brain.array,
                        lesion=case.lesion.array, proton_only=case.proton_only.array,
                        proton_only_contrast=case.proton_only_contrast)
    pick = {"psnr": "psnr_mask", "ssim": "ssim_mask", "crc": "lesion_crc", "leakage": "proton_leakage"}
    return {k: (float(m[v]) if isinstance(m.get(v), (int, float)) else None) for k, v in pick.items()}


def _bias_log_std(result, support) -> Optional[float]:
    if result.bias_field is None:
        return None
    lb = np.log(np.clip(np.asarray(result.bias_field, np.float64)[support], 1e-6, None))
    return float(lb.std())


def _dip_stage(result) -> dict:
    """The stage dipfusion returned and the pilot's image / field it started from (None for other methods)."""
    extras = result.extras or {}
    if "pilot_image" not in extras:
        return {}
    diag = getattr(result, "diagnostics", {}) or {}
    return {"pilot_image": np.asarray(extras["pilot_image"], np.float64),
            "pilot_bias": extras.get("pilot_bias"), "stage": diag.get("returned_stage", "dip")}


def _run_truth_case(sc: SuiteCase, methods, preset, seed, device, params, on_row) -> dict:
    from SodiumDIPLib.pipeline import prepare_denoising, run_method

    case = sc.build()
    problem, scale, _ = prepare_denoising(case.sodium, case.proton)  # as `sodiumdip denoise` gets it
    support = np.asarray(problem.support, bool)
    rows = {"input": dict(_truth_scores(case.sodium.array, case), seconds=None)}
    if on_row:
        on_row(sc, "input", rows["input"])
    for name in methods:
        result, info = run_method(problem, name, preset, (params or {}).get(name), seed, device)
        row = dict(_truth_scores(np.asarray(result.image) * scale, case), seconds=info["seconds"],
                   bias_log_std=_bias_log_std(result, support))
        stage = _dip_stage(result)
        if stage:
            pilot = _truth_scores(stage["pilot_image"] * scale, case)
            row["pilot_psnr"] = pilot["psnr"]
            row["dip_gain_db"] = (row["psnr"] - pilot["psnr"]) if None not in (row["psnr"], pilot["psnr"]) else None
            row["stage"] = stage["stage"]
        rows[name] = row
        if on_row:
            on_row(sc, name, row)
    return rows


def _run_real_case(sc: SuiteCase, methods, preset, seed, device, params, data_dir, on_row) -> dict:
    from SodiumDIPLib.apps.cases import real_pair
    from SodiumDIPLib.pipeline import run_method

    pair = real_pair(data_dir)
    rows = {"input": {"gain_db": 0.0, "seconds": None}}
    if on_row:
        on_row(sc, "input", rows["input"])
    for name in methods:
        result, info = run_method(pair.problem, name, preset, (params or {}).get(name), seed, device)
        score = pair.score(result)
        row = {"gain_db": score["gain_db"], "seconds": info["seconds"], "bias_r": score.get("bias_corr_measured"),
               "bias_log_std": _bias_log_std(result, pair.head)}
        stage = _dip_stage(result)
        if stage:
            x = stage["pilot_image"] * pair.scale
            if stage["pilot_bias"] is not None:
                x = x * np.asarray(stage["pilot_bias"], np.float64)
            row["pilot_gain_db"] = pair.gain_db(x)
            row["dip_gain_db"] = row["gain_db"] - row["pilot_gain_db"]
            row["stage"] = stage["stage"]
        rows[name] = row
        if on_row:
            on_row(sc, name, row)
    return rows


def run_suite(name: str = "fast", methods=None, preset: str = "fast", seed: int = 0, device: str = "auto",
              params: Optional[dict] = None, data_dir=None, on_row: Optional[Callable] = None) -> dict:
    """Run ``methods`` on every case of suite ``name``; returns {"cases": [...], "skipped": {case: why}}.

    data_dir: the uhf23na folder for the real pair (default ../shared/data/uhf23na; skipped when absent).
    on_row(case, method, row) is called after every method of every case (progress, incremental saving)."""
    from SodiumDIPLib.apps.cases import DEFAULT_METHODS, available
    from SodiumDIPLib.data.atlas import available as atlas_missing

    names, skipped_methods = available(list(methods) if methods else [m for m in DEFAULT_METHODS if m != "dip"])
    report = {"suite": name, "preset": preset, "seed": seed, "methods": names, "skipped_methods": skipped_methods,
              "cases": [], "skipped": {}}
    data = Path(data_dir) if data_dir else DEFAULT_DATA
    for sc in suite_cases(name):
        if sc.family == "atlas" and atlas_missing():
            report["skipped"][sc.name] = atlas_missing()
            continue
        if sc.real and not (data / "c2p_naa_6.nii").exists():
            report["skipped"][sc.name] = f"real pair not found in {data} (give --data)"
            continue
        if sc.real:
            rows = _run_real_case(sc, names, preset, seed, device, params, data, on_row)
        else:
            rows = _run_truth_case(sc, names, preset, seed, device, params, on_row)
        report["cases"].append({"name": sc.name, "family": sc.family, "split": sc.split, "real": sc.real,
                                "rows": rows})
    report["summary"] = summarise(report)
    return report


def summarise(report: dict) -> dict:
    """Per method: mean PSNR over the simulated cases, its mean difference to dtv, the worst CRC / leakage, the
    real-pair gain, and the worst DIP-stage gain over the pilot (dipfusion)."""
    out = {}
    for name in report["methods"] + ["input"]:
        sim = [c["rows"][name] for c in report["cases"] if not c["real"] and name in c["rows"]]
        dtv = [c["rows"].get("dtv") for c in report["cases"] if not c["real"] and name in c["rows"]]
        ps = [r["psnr"] for r in sim if r.get("psnr") is not None]
        diff = [r["psnr"] - d["psnr"] for r, d in zip(sim, dtv) if d and None not in (r.get("psnr"), d.get("psnr"))]
        crc = [r["crc"] for r in sim if r.get("crc") is not None]
        leak = [r["leakage"] for r in sim if r.get("leakage") is not None]
        gains = [r["dip_gain_db"] for c in report["cases"] for k, r in c["rows"].items()
                 if k == name and r.get("dip_gain_db") is not None]
        real = [c["rows"][name].get("gain_db") for c in report["cases"] if c["real"] and name in c["rows"]]
        out[name] = {"mean_psnr": float(np.mean(ps)) if ps else None,
                     "mean_psnr_minus_dtv": float(np.mean(diff)) if diff else None,
                     "min_crc": min(crc) if crc else None, "max_leakage": max(leak) if leak else None,
                     "worst_dip_gain_db": min(gains) if gains else None, "real_gain_db": real[0] if real else None}
    return out


def format_suite_table(report: dict) -> str:
    fmt = lambda v, f: (f % v) if isinstance(v, (int, float)) and math.isfinite(v) else "-"  # noqa: E731
    lines = [f"suite {report['suite']} preset {report['preset']} seed {report['seed']}",
             f"{'case':<32} {'split':<8} {'method':<10} {'PSNR':>6} {'SSIM':>6} {'CRC':>5} {'leak':>6} "
             f"{'gain':>6} {'DIP-pilot':>9} {'stage':<7} {'bias sd':>7} {'sec':>6}"]
    for c in report["cases"]:
        for name, r in c["rows"].items():
            lines.append(f"{c['name']:<32} {c['split']:<8} {name:<10} {fmt(r.get('psnr'), '%6.2f')} "
                         f"{fmt(r.get('ssim'), '%6.3f')} {fmt(r.get('crc'), '%5.2f')} {fmt(r.get('leakage'), '%6.3f')} "
                         f"{fmt(r.get('gain_db'), '%6.2f')} {fmt(r.get('dip_gain_db'), '%9.2f')} "
                         f"{str(r.get('stage', '')):<7} {fmt(r.get('bias_log_std'), '%7.3f')} "
                         f"{fmt(r.get('seconds'), '%6.1f')}")
    for case, why in report["skipped"].items():
        lines.append(f"{case:<32} skipped: {why}")
    lines.append("summary (simulated cases; gain = repeat-based gain on the real pair, dB)")
    lines.append(f"{'method':<10} {'mean PSNR':>9} {'vs dtv':>7} {'min CRC':>7} {'max leak':>8} "
                 f"{'worst DIP-pilot':>15} {'real gain':>9}")
    for name, s in report.get("summary", {}).items():
        lines.append(f"{name:<10} {fmt(s['mean_psnr'], '%9.2f')} {fmt(s['mean_psnr_minus_dtv'], '%7.2f')} "
                     f"{fmt(s['min_crc'], '%7.2f')} {fmt(s['max_leakage'], '%8.3f')} "
                     f"{fmt(s['worst_dip_gain_db'], '%15.2f')} {fmt(s['real_gain_db'], '%9.2f')}")
    return "\n".join(lines)
