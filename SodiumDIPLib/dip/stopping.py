"""Stopping rules for iterative reconstructions (DIP and friends) that need no ground truth.

Every rule has one interface:

    stop = rule.update(iteration, output, loss, residual_mse=None)   # True: stop now
    rule.best_output, rule.best_iteration, rule.stop_iteration, rule.name, rule.reason

``output`` may be a torch tensor (kept on its device, detached) or a numpy array; ``best_output`` is a copy of
the same type. Every rule also stops at ``max_iterations`` (when given), keeping its own choice of output.

- FixedIterations(n): stop at n, return the last output.
- RunningVariance(window, patience): ES-WMV (Wang et al., "Early stopping for deep image prior", TMLR
  2023): the variance of the last ``window`` outputs, VAR_t = mean_i ||x_i - mean||^2 / N, falls while the
  network fits structure and rises once it starts fitting noise. Stop when its minimum has not improved for
  ``patience`` iterations; return the output at the argmin iteration.
- Discrepancy(noise_variance, tau): Morozov's discrepancy principle: stop when the (exponentially smoothed)
  residual mean squared error reaches tau * noise variance; return the output at that iteration.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from SodiumDIPLib.errors import InputError

Output = Union[torch.Tensor, np.ndarray]

__all__ = ["StoppingRule", "FixedIterations", "RunningVariance", "Discrepancy", "make_rule", "RULES"]


def _copy(output: Output) -> Output:
    if isinstance(output, torch.Tensor):
        return output.detach().clone()
    return np.array(output, copy=True)


class StoppingRule:
    """Base class: tracks the best output and the max-iterations cap."""

    name = "base"

    def __init__(self, max_iterations: Optional[int] = None):
        if max_iterations is not None and int(max_iterations) < 1:
            raise InputError(f"max_iterations must be >= 1, got {max_iterations}")
        self.max_iterations = None if max_iterations is None else int(max_iterations)
        self.best_output: Optional[Output] = None
        self.best_iteration: int = -1
        self.stop_iteration: Optional[int] = None
        self.stopped = False
        self.reason = "not stopped"
        self.last_iteration = -1

    def _keep(self, iteration: int, output: Output) -> None:
        self.best_output = _copy(output)
        self.best_iteration = int(iteration)

    def _stop(self, iteration: int, reason: str) -> bool:
        self.stopped = True
        self.stop_iteration = int(iteration)
        self.reason = reason
        return True

    def _capped(self, iteration: int) -> bool:
        return self.max_iterations is not None and iteration + 1 >= self.max_iterations

    def update(self, iteration: int, output: Output, loss: float, residual_mse: Optional[float] = None) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(best_iteration={self.best_iteration}, reason={self.reason!r})"


class FixedIterations(StoppingRule):
    """Stop after ``n`` iterations (iteration index n - 1, counting from 0); the best output is the last."""

    name = "fixed"

    def __init__(self, n: int, max_iterations: Optional[int] = None):
        if int(n) < 1:
            raise InputError(f"the fixed iteration count must be >= 1, got {n}")
        n = int(n) if max_iterations is None else min(int(n), int(max_iterations))
        super().__init__(max_iterations=n)
        self.n = n

    def update(self, iteration, output, loss, residual_mse=None):
        if self.stopped:  # updates after the stop change nothing
            return True
        self.last_iteration = int(iteration)
        self._keep(iteration, output)
        if iteration + 1 >= self.n:
            return self._stop(iteration, f"fixed: {self.n} iterations")
        return False


class RunningVariance(StoppingRule):
    """ES-WMV: stop when the windowed output variance has not reached a new minimum for ``patience`` iterations.

    window: number of recent outputs in the variance (ES-WMV default 100 for DIP; 20-50 for short runs).
    patience: iterations without a new minimum before stopping. min_delta: relative improvement that counts.
    The window is a ring buffer on the output's device; mean and sum of squared deviations are updated
    incrementally (sliding Welford) and recomputed exactly every ``window`` updates to stop float32 drift,
    so each update costs O(N), not O(window * N).
    """

    name = "wmv"

    def __init__(self, window: int = 50, patience: int = 200, min_delta: float = 0.0,
                 max_iterations: Optional[int] = None):
        super().__init__(max_iterations)
        if int(window) < 2 or int(patience) < 1:
            raise InputError(f"window must be >= 2 and patience >= 1, got window={window}, patience={patience}")
        self.window, self.patience, self.min_delta = int(window), int(patience), float(min_delta)
        self._buf: Optional[torch.Tensor] = None
        self._numpy = False
        self._count = 0
        self._mean: Optional[torch.Tensor] = None
        self._m2 = 0.0
        self.best_variance = float("inf")
        self.variances: list = []  # (iteration, variance) for reports / plots

    def _flat(self, output: Output) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return output.detach().reshape(-1).float()
        self._numpy = True
        return torch.from_numpy(np.ascontiguousarray(output, dtype=np.float32).reshape(-1))

    def _variance_update(self, x: torch.Tensor) -> Optional[float]:
        w = self.window
        if self._buf is None:
            self._buf = x.new_zeros((w, x.numel()))
        slot = self._count % w
        if self._count < w:
            self._buf[slot] = x
            self._count += 1
            if self._count < w:
                return None
            self._recompute()
        else:
            old = self._buf[slot].clone()
            self._buf[slot] = x
            self._count += 1
            if self._count % w == 0:
                self._recompute()
            else:
                new_mean = self._mean + (x - old) / w
                self._m2 += float(((x - old) * (x - new_mean + old - self._mean)).double().sum())
                self._mean = new_mean
        return max(self._m2, 0.0) / (w * x.numel())

    def _recompute(self) -> None:
        self._mean = self._buf.mean(0)
        self._m2 = float(((self._buf - self._mean) ** 2).double().sum())

    def update(self, iteration, output, loss, residual_mse=None):
        if self.stopped:  # updates after the stop change nothing
            return True
        self.last_iteration = int(iteration)
        var = self._variance_update(self._flat(output))
        if var is not None:
            self.variances.append((int(iteration), var))
            if var < self.best_variance * (1.0 - self.min_delta) or self.best_output is None:
                self.best_variance = var
                self._keep(iteration, output)
            elif iteration - self.best_iteration >= self.patience:
                return self._stop(iteration, (
                    f"wmv: windowed variance (window {self.window}) minimal at iteration {self.best_iteration}, "
                    f"no new minimum for {self.patience} iterations; stopped at {iteration}"))
        else:
            self._keep(iteration, output)  # before the first full window, the latest output is the best guess
        if self._capped(iteration):
            return self._stop(iteration, (
                f"wmv: reached max_iterations {self.max_iterations}; returning the minimum-variance output of "
                f"iteration {self.best_iteration}"))
        return False


class Discrepancy(StoppingRule):
    """Morozov: stop once the smoothed residual MSE <= tau * noise_variance.

    noise_variance: expected per-sample MSE of the residual of a perfect fit (sigma^2 for Gaussian data,
    per real channel for complex data, in the units of ``residual_mse``). smoothing in [0, 1): exponential
    moving average factor on the residual (0 = none) so that a noisy optimiser does not stop on one lucky step.
    min_iterations: never stop before this.
    """

    name = "discrepancy"

    def __init__(self, noise_variance: float, tau: float = 1.0, smoothing: float = 0.9, min_iterations: int = 0,
                 max_iterations: Optional[int] = None):
        super().__init__(max_iterations)
        if noise_variance is None or not (float(noise_variance) > 0):
            raise InputError(f"the discrepancy rule needs a noise variance > 0, got {noise_variance}")
        if not (tau > 0) or not (0.0 <= smoothing < 1.0):
            raise InputError(f"tau must be > 0 and smoothing in [0, 1), got tau={tau}, smoothing={smoothing}")
        self.noise_variance, self.tau, self.smoothing = float(noise_variance), float(tau), float(smoothing)
        self.min_iterations = int(min_iterations)
        self.smoothed: Optional[float] = None

    def update(self, iteration, output, loss, residual_mse=None):
        if self.stopped:  # updates after the stop change nothing
            return True
        self.last_iteration = int(iteration)
        if residual_mse is None:
            raise InputError("the discrepancy rule needs residual_mse at every update")
        r = float(residual_mse)
        self.smoothed = r if self.smoothed is None else self.smoothing * self.smoothed + (1 - self.smoothing) * r
        target = self.tau * self.noise_variance
        if iteration >= self.min_iterations and self.smoothed <= target:
            self._keep(iteration, output)
            return self._stop(iteration, (
                f"discrepancy: smoothed residual MSE {self.smoothed:.4g} <= {self.tau:g} x noise variance "
                f"{self.noise_variance:.4g} at iteration {iteration}"))
        if self._capped(iteration):
            self._keep(iteration, output)
            return self._stop(iteration, (
                f"discrepancy: residual {self.smoothed:.4g} never reached {target:.4g}; stopped at "
                f"max_iterations {self.max_iterations}"))
        return False


RULES = {"fixed": FixedIterations, "wmv": RunningVariance, "discrepancy": Discrepancy}


def make_rule(name: str, **params) -> StoppingRule:
    """Build a rule by name: "fixed" (n or iterations), "wmv" (window, patience, min_delta), "discrepancy"
    (noise_variance, tau, smoothing, min_iterations); all accept max_iterations. Unknown names/params raise
    InputError. Parameters given as None are ignored (the rule's default applies).
    """
    params = {k: v for k, v in params.items() if v is not None}
    if name == "fixed" and "iterations" in params:
        params["n"] = params.pop("iterations")
    if name == "fixed" and "n" not in params and "max_iterations" in params:
        params["n"] = params.pop("max_iterations")
    if name not in RULES:
        raise InputError(f"unknown stopping rule {name!r}; expected one of {sorted(RULES)}")
    try:
        return RULES[name](**params)
    except TypeError as exc:
        raise InputError(f"bad parameters for stopping rule {name!r}: {exc}") from None
