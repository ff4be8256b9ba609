"""Stopping rules on synthetic optimisation trajectories (SodiumDIPLib.dip.stopping)."""

import numpy as np
import pytest
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.dip.stopping import Discrepancy, FixedIterations, RunningVariance, make_rule


def _dip_like_trajectory(n_iter=600, k=200, shape=(8, 8, 8), seed=0):
    """Outputs that converge to a clean image, then pick up noise that grows after iteration k (overfitting).

    Each iteration also jitters a little (optimiser noise). Returns (clean, list of outputs, true MSE per iteration).
    """
    rng = np.random.default_rng(seed)
    clean = rng.random(shape).astype(np.float32)
    noise = rng.standard_normal(shape).astype(np.float32)
    outs, mse = [], []
    for t in range(n_iter):
        fit = 1.0 - np.exp(-t / 30.0)  # structure is learnt fast
        overfit = 0.0 if t < k else 0.5 * (1 - np.exp(-(t - k) / 80.0))  # noise is learnt late
        jitter = 0.02 * (1 + 4 * overfit) * rng.standard_normal(shape).astype(np.float32)
        x = fit * clean + overfit * noise + jitter
        outs.append(x)
        mse.append(float(np.mean((x - clean) ** 2)))
    return clean, outs, np.array(mse)


def test_fixed_iterations_stops_at_n_and_returns_last():
    rule = FixedIterations(5)
    stops = [rule.update(i, np.full(3, float(i)), loss=1.0) for i in range(10)]
    assert stops.index(True) == 4
    assert rule.best_iteration == 4 and np.all(rule.best_output == 4.0)
    assert rule.stop_iteration == 4 and "fixed" in rule.reason
    assert make_rule("fixed", max_iterations=7).n == 7


@pytest.mark.parametrize("as_tensor", [False, True])
def test_running_variance_stops_after_overfitting_starts(as_tensor):
    k = 200
    clean, outs, mse = _dip_like_trajectory(k=k)
    rule = make_rule("wmv", window=20, patience=60)
    stop_at = None
    for t, x in enumerate(outs):
        out = torch.from_numpy(x) if as_tensor else x
        if rule.update(t, out, loss=0.0):
            stop_at = t
            break
    assert stop_at is not None, rule.reason
    assert k - 40 <= rule.best_iteration <= k + 40, rule.reason  # minimum variance at the onset of overfitting
    assert stop_at == rule.best_iteration + 60
    best = rule.best_output.numpy() if as_tensor else rule.best_output
    assert isinstance(rule.best_output, torch.Tensor) == as_tensor
    assert np.array_equal(best, outs[rule.best_iteration])  # the output of the chosen iteration, not the last
    assert mse[rule.best_iteration] < 2.0 * mse.min()  # near the oracle
    assert mse[rule.best_iteration] < 0.2 * mse[-1]
    assert "wmv" in rule.reason and str(rule.best_iteration) in rule.reason


def test_running_variance_incremental_matches_direct_computation():
    rng = np.random.default_rng(1)
    rule = RunningVariance(window=7, patience=1000)
    outs = [rng.standard_normal(50).astype(np.float32) * (1 + 0.01 * t) for t in range(40)]
    for t, x in enumerate(outs):
        rule.update(t, x, loss=0.0)
    for t, var in rule.variances:
        w = np.stack(outs[t - 6:t + 1]).astype(np.float64)
        direct = ((w - w.mean(0)) ** 2).sum() / w.size
        assert abs(var - direct) < 1e-5 * direct


def test_running_variance_caps_at_max_iterations():
    rule = RunningVariance(window=5, patience=1000, max_iterations=30)
    stops = [rule.update(t, np.full(4, 1.0 / (t + 1), np.float32), loss=0.0) for t in range(40)]
    assert stops.index(True) == 29 and "max_iterations" in rule.reason
    assert rule.best_output is not None


def test_discrepancy_stops_when_residual_reaches_noise_level():
    sigma2 = 0.01
    n = 400
    resid = sigma2 + 0.5 * np.exp(-np.arange(n) / 40.0)  # decreases to the noise level...
    resid[250:] -= np.linspace(0, 0.5 * sigma2, n - 250)  # ...then below it (fitting noise)
    cross = int(np.argmax(resid <= 1.05 * sigma2))
    rule = Discrepancy(sigma2, tau=1.05, smoothing=0.0)
    stop_at = None
    for t in range(n):
        if rule.update(t, torch.full((2, 2), float(t)), loss=resid[t], residual_mse=resid[t]):
            stop_at = t
            break
    assert stop_at == cross
    assert rule.best_iteration == cross and float(rule.best_output[0, 0]) == cross
    # smoothing delays the stop a little and never makes it stop early
    rule_s = make_rule("discrepancy", noise_variance=sigma2, tau=1.05, smoothing=0.8)
    t = 0
    while not rule_s.update(t, np.zeros(1), loss=0.0, residual_mse=resid[t]):
        t += 1
    assert cross <= t <= cross + 20
    assert "discrepancy" in rule_s.reason


def test_discrepancy_never_reached_stops_at_max_iterations():
    rule = make_rule("discrepancy", noise_variance=0.01, max_iterations=50)
    stops = [rule.update(t, np.full(1, t), loss=0.0, residual_mse=1.0) for t in range(60)]
    assert stops.index(True) == 49 and rule.best_iteration == 49 and "never reached" in rule.reason


def test_make_rule_validates():
    with pytest.raises(InputError):
        make_rule("nope")
    with pytest.raises(InputError):
        make_rule("wmv", windw=3)
    with pytest.raises(InputError):
        make_rule("discrepancy", noise_variance=0.0)
    with pytest.raises(InputError):
        make_rule("discrepancy", noise_variance=1.0).update(0, np.zeros(1), 0.0)
    r = make_rule("wmv", window=10, patience=None)  # None means "default"
    assert r.patience == RunningVariance().patience
