"""What the benchmark and the validation suite share: the default list of methods, which of them can run here,
and the scoring of the real 7 T repeat pair (denoise one repeat, score against the other)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from SodiumDIPLib.errors import InputError

DEFAULT_METHODS = ("dipfusion", "dip", "dtv", "tv", "bm4d", "c2s", "pnp")


def available(methods):
    """(the names that can run here, {name: reason} for the others)."""
    from SodiumDIPLib.methods import get_method

    out, skipped = [], {}
    for name in methods:
        try:
            get_method(name)
            out.append(name)
        except InputError as exc:
            skipped[name] = str(exc)
    return out, skipped


def pick_metrics(m: dict) -> dict:
    keys = ("psnr_mask", "ssim_mask", "nrmse_mask", "lesion_crc", "proton_leakage", "psnr_global")
    return {k: m[k] for k in keys if k in m}


class RealPair:
    """The 7 T repeat pair prepared for scoring (see the module docstring).

    problem / scale: naa_6 guided by gre_2, as ``prepare_denoising`` makes it; head: the head mask;
    gain_db(x): 10 log10 of the input's over x's unbiased error estimate against naa_8 (x in scanner units,
    the model of the measurement: b * image for bias-correcting methods); score(result): the method's numbers."""

    def __init__(self, data_dir):
        from scipy import ndimage as ndi

        from SodiumDIPLib.data.io import read_volume
        from SodiumDIPLib.pipeline import prepare_denoising
        from SodiumDIPLib.data.support import head_mask

        d = Path(data_dir)
        files = {k: d / f"{k}.nii" for k in ("c2p_naa_6", "c2p_naa_8", "c2p_nav_7", "gre_2")}
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise InputError(f"benchmark --data: missing {', '.join(missing)}; expected the uhf23na folder")
        na6, na8, nav, gre = (read_volume(files[k]) for k in ("c2p_naa_6", "c2p_naa_8", "c2p_nav_7", "gre_2"))
        a6, self.a8, v7 = (v.array.astype(np.float64) for v in (na6, na8, nav))
        self.head = head_mask(a6)
        self.sigma2 = float(np.mean((a6 - self.a8)[self.head] ** 2) / 2)
        smooth = lambda a: ndi.gaussian_filter(a, 2.0)  # noqa: E731
        self.measured_bias = smooth(a6) / np.maximum(smooth(v7), 1e-6)
        self.problem, self.scale, _ = prepare_denoising(na6, gre)
        self.input_error = self.error(a6)

    def error(self, x) -> float:
        """Unbiased estimate of the mean squared error of ``x`` in the head: mean (x - naa_8)^2 - sigma^2."""
        return float(np.mean((np.asarray(x, np.float64) - self.a8)[self.head] ** 2) - self.sigma2)

    def gain_db(self, x) -> Optional[float]:
        e = self.error(x)
        return 10 * math.log10(self.input_error / e) if e > 0 else None

    def score(self, result) -> dict:
        x = np.asarray(result.image, np.float64) * self.scale
        if result.bias_field is not None:
            # naa_8 carries the same receive bias: compare the model of the measurement, b * x
            x = x * np.asarray(result.bias_field, np.float64)
        e = self.error(x)
        rec = {"mse_estimate": e, "gain_db": self.gain_db(x)}
        diag = getattr(result, "diagnostics", {}) or {}
        if diag.get("fidelity") in ("chi", "rician", "corrected_ls"):
            # A noise-floor-aware fit returns the signal without the floor; naa_8 contains it. Also report the
            # model of the measurement's expectation E[y | b x], which is what naa_8 estimates.
            import torch

            from SodiumDIPLib.dip.fidelity import expected_magnitude

            ey = expected_magnitude(torch.from_numpy(x / self.scale), diag["noise_sigma"],
                                    diag["n_channels"]).numpy() * self.scale
            rec["mse_estimate_signal"] = e
            rec["mse_estimate"] = self.error(ey)
            rec["gain_db"] = self.gain_db(ey)
        if result.bias_field is not None:
            rec["bias_corr_measured"] = float(np.corrcoef(result.bias_field[self.head],
                                                          self.measured_bias[self.head])[0, 1])
        return rec


def real_pair(data_dir) -> RealPair:
    return RealPair(data_dir)
