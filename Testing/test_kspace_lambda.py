"""Regularisation weight for k-space data: Monte-Carlo GCV picks a weight near the best of its search grid."""

import numpy as np

from SodiumDIPLib.physics.kspace import kspace_problem, undersample_case
from SodiumDIPLib.methods import RunContext, get_method
from SodiumDIPLib.physics.simulate import simulate_kspace


def test_gcv_choice_is_near_the_best_weight():
    n = 64
    g = np.meshgrid(*[(np.arange(n) - n // 2) / (n / 2) for _ in range(2)], indexing="ij")
    x = ((g[0] ** 2 + g[1] ** 2 < 0.6) * (1 + 0.8 * ((g[1] - 0.3) ** 2 + g[0] ** 2 < 0.04)
                                        - 0.5 * ((g[1] + 0.3) ** 2 + (g[0] - 0.2) ** 2 < 0.02))).astype(np.float32)
    sim = simulate_kspace(x, n_coils=4, relative_noise=0.1, seed=0)
    uc = undersample_case(sim.kspace, 3, seed=0)
    kp = kspace_problem(uc.kspace, uc.mask, sensitivities=sim.sensitivities, absorb_phase=False)
    tv = get_method("tv")
    base = dict(tv.presets["fast"], bias_correction="none", kspace_lambda_sigma=0.6)
    obj = x > 0

    def err(res):
        return float(np.linalg.norm((res.image / kp.scale - x)[obj]) / np.linalg.norm(x[obj]))

    chosen = tv.run(kp.problem, base, RunContext())
    ls = chosen.history[-1]["lambda_sigma"]
    curve = dict(chosen.history[0]["gcv_curve"])
    assert chosen.history[-1]["lambda_select"] == "gcv" and ls in curve and len(curve) >= 5
    errors = {w: err(tv.run(kp.problem, dict(base, lambda_select="fixed", kspace_lambda_sigma=w), RunContext()))
              for w in curve}
    best, worst = min(errors.values()), max(errors.values())
    # the choice is close to the best weight of the grid and far from the worst
    assert errors[ls] < best + 0.1 * (worst - best), (ls, errors)
