"""Finite differences, direction fields, their fusion and the directional-TV prior (SodiumDIPLib.priors.guidance)."""


import numpy as np
import pytest
import torch

from SodiumDIPLib.priors import guidance as G
from SodiumDIPLib.errors import InputError


@pytest.mark.parametrize("shape,spacing", [((17, 12), None), ((9, 10, 11), (1.0, 2.5, 4.0))])
def test_divergence_is_minus_adjoint_of_gradient(shape, spacing):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.randn((len(shape),) + shape, generator=g, dtype=torch.float64)
    lhs = (G.gradient(x, spacing) * v).sum()
    rhs = -(x * G.divergence(v, spacing)).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(lhs.abs() + 1)


def test_gradient_values_neumann_and_spacing():
    x = torch.arange(4.0).view(1, 4).repeat(3, 1)  # ramp along the last axis
    gr = G.gradient(x, spacing=(1.0, 2.0))
    assert gr.shape == (2, 3, 4)
    assert torch.allclose(gr[1, :, :3], torch.full((3, 3), 0.5))
    assert torch.all(gr[1, :, 3] == 0) and torch.all(gr[0] == 0)  # Neumann: last difference is zero
    # batch axes are carried along
    gb = G.gradient(x[None, None], spacing=(1.0, 2.0), ndim=2)
    assert gb.shape == (1, 1, 2, 3, 4) and torch.equal(gb[0, 0], gr)
    assert torch.allclose(G.divergence(gb, ndim=2)[0, 0], G.divergence(gr))


def test_normalise_guide_percentile_and_mask():
    img = np.linspace(0, 10, 1000, dtype=np.float32).reshape(10, 100)
    p = G.normalise_guide(img, percentile=50)
    assert float(p.max()) == 1.0 and float(p.min()) == 0.0
    assert abs(float(torch.quantile(p.flatten(), 0.25)) - 0.5) < 0.01
    mask = np.zeros_like(img, dtype=bool)
    mask[:, :50] = True  # the mask's maximum is at [9, 49]; brighter voxels outside it are clipped to 1
    pm = G.normalise_guide(img, percentile=100, mask=mask)
    assert abs(float(pm[9, 49]) - 1.0) < 1e-6 and float(pm[9, 99]) == 1.0
    assert abs(float(pm[0, 20]) - img[0, 20] / img[9, 49]) < 1e-6
    with pytest.raises(InputError):
        G.normalise_guide(img, mask=mask[:5])


def _step(shape, axis, pos):
    x = torch.zeros(shape)
    idx = [slice(None)] * len(shape)
    idx[axis] = slice(pos, None)
    x[tuple(idx)] = 1.0
    return x


def test_direction_field_magnitude_follows_eta():
    p = _step((16, 16, 16), 0, 8)
    xi = G.direction_field(p, eta=0.01)
    mag = torch.sqrt((xi ** 2).sum(0))
    assert xi.shape == (3, 16, 16, 16) and not xi.requires_grad
    assert float(mag[7].min()) > 0.99  # the edge voxels
    assert float(mag[:6].max()) == 0.0  # flat region
    assert torch.allclose(xi[0, 7], mag[7])  # points across the edge (along axis 0)
    xi_big = G.direction_field(p, eta=10.0)
    assert float(torch.sqrt((xi_big ** 2).sum(0)).max()) < 0.1  # eta >> edge height: no guidance


def test_dtv_equals_tv_for_zero_field_or_zero_gamma():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 13, 14, generator=g)
    xi = G.direction_field(torch.rand(12, 13, 14, generator=g), eta=0.05)
    gr = G.gradient(x, (2.0, 1.0, 1.0))
    tv = torch.sqrt((gr ** 2).sum(0) + 1e-6).sum()
    assert torch.allclose(G.dtv(x, None, eps=1e-3, spacing=(2.0, 1.0, 1.0)), tv)
    assert torch.allclose(G.dtv(x, torch.zeros_like(xi), eps=1e-3, spacing=(2.0, 1.0, 1.0)), tv)
    assert torch.allclose(G.dtv(x, xi, gamma=0.0, eps=1e-3, spacing=(2.0, 1.0, 1.0)), tv)
    # a genuine field with gamma > 0 lowers the cost (P is a contraction)
    assert float(G.dtv(x, xi, gamma=0.95, spacing=(2.0, 1.0, 1.0))) < float(tv)


@pytest.mark.parametrize("d", [2, 3])
def test_edge_along_xi_is_free_and_across_costs(d):
    shape = (12,) * d
    guide = _step(shape, 0, 6)
    xi = G.direction_field(guide, eta=1e-3)  # |xi| ~ 1 at the guide's edge, pointing along axis 0
    shared = _step(shape, 0, 6)  # the same edge as the guide: gradient along xi
    other = _step(shape, 1, 6)  # an edge the guide does not have: gradient orthogonal to xi
    eps = 1e-4
    tv_shared = float(G.dtv(shared, None, eps=eps))
    tv_other = float(G.dtv(other, None, eps=eps))
    assert abs(tv_shared - tv_other) < 1e-3  # same cost under plain TV
    for gamma in (0.99, 0.999):
        assert float(G.dtv(shared, xi, gamma=gamma, eps=eps)) < (1 - gamma) * tv_shared * 1.1 + 12 ** d * eps
    assert abs(float(G.dtv(other, xi, gamma=0.999, eps=eps)) - tv_other) < 1e-3 * tv_other
    # batched input (network output layout) gives the same value
    assert torch.allclose(G.dtv(other[None, None], xi, gamma=0.999, eps=eps), G.dtv(other, xi, gamma=0.999, eps=eps))
    assert torch.allclose(G.dtv(other[None, None], None, eps=eps, ndim=d), G.dtv(other, None, eps=eps))
    # and the dTV gradient flows to x
    x = other.clone().requires_grad_(True)
    G.dtv(x, xi).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_fusion_tensor_matches_eigh_and_weights():
    g = torch.Generator().manual_seed(2)
    xh = G.direction_field(torch.rand(10, 11, 12, generator=g), eta=0.1)
    xn = G.direction_field(torch.rand(10, 11, 12, generator=g), eta=0.1)
    w_h, w_na = 1.0, 0.6
    f = G.fuse_direction_fields(xh, xn, w_h, w_na).double()
    T = (w_h * xh[:, None] * xh[None] + w_na * xn[:, None] * xn[None]).permute(2, 3, 4, 0, 1).double()
    lam, vec = torch.linalg.eigh(T)
    v = vec[..., -1].permute(3, 0, 1, 2)
    gap = lam[..., -1] - lam[..., -2]
    ok = gap > 1e-4
    assert ok.float().mean() > 0.99
    mag2 = (f * f).sum(0)
    assert torch.allclose(mag2[ok], torch.clamp(lam[..., -1][ok] / max(w_h, w_na), max=1.0), atol=1e-5)
    cos = (f * v).sum(0).abs() / mag2.sqrt().clamp(min=1e-12)
    assert float(cos[ok & (mag2 > 1e-6)].min()) > 0.999
    assert float(mag2.max()) <= 1.0 + 1e-6
    # w_na = 0 is proton-only dTV exactly; w_h = 0 is sodium-only
    assert torch.equal(G.fuse_direction_fields(xh, xn, 1.0, 0.0), xh)
    assert torch.equal(G.fuse_direction_fields(xh, xn, 0.0, 1.0), xn)
    assert torch.equal(G.fuse_direction_fields(xh, xn, 1.0, 0.0, method="sum"), xh)


@pytest.mark.parametrize("method", ["tensor", "sum"])
@pytest.mark.parametrize("d", [2, 3])
def test_fused_field_keeps_single_contrast_edges(method, d):
    shape = (16,) * d
    proton = _step(shape, 0, 8)  # anatomy: an edge across axis 0
    sodium = 0.5 * proton.clone()
    lesion = [slice(2, 6)] * d  # a sodium-only lesion away from the anatomical edge
    sodium[tuple(lesion)] += 0.5
    xh = G.direction_field(proton, eta=0.02)
    xn = G.direction_field(sodium, eta=0.02)
    xi = G.fuse_direction_fields(xh, xn, 1.0, 1.0, method=method)
    mag = torch.sqrt((xi ** 2).sum(0))
    lesion_edge = (torch.sqrt((xn ** 2).sum(0)) > 0.9) & (torch.sqrt((xh ** 2).sum(0)) < 1e-6)
    proton_edge = torch.sqrt((xh ** 2).sum(0)) > 0.9
    assert lesion_edge.sum() > 0 and proton_edge.sum() > 0
    assert float(mag[lesion_edge].min()) > 0.9  # the sodium-only lesion edge survives fusion at full strength
    assert float(mag[proton_edge].min()) > 0.9  # and so does the anatomical edge
    # the lesion edge is NOT protected by proton-only guidance: that is what fusion adds
    x = sodium
    pen_fused = float(G.dtv(x, xi, gamma=0.95, weight=lesion_edge.float()))
    pen_proton = float(G.dtv(x, xh, gamma=0.95, weight=lesion_edge.float()))
    assert pen_fused < 0.2 * pen_proton


def test_fusion_fast_on_64_cubed():
    import time
    g = torch.Generator().manual_seed(3)
    xh = G.direction_field(torch.rand(64, 64, 64, generator=g), eta=0.05)
    xn = G.direction_field(torch.rand(64, 64, 64, generator=g), eta=0.05)
    t = time.perf_counter()
    G.fuse_direction_fields(xh, xn)
    assert time.perf_counter() - t < 2.0  # closed form: ~0.05 s on an idle core (machine is shared)


def test_pilot_estimate_smooths_and_keeps_mean():
    g = torch.Generator().manual_seed(4)
    y = 1.0 + 0.1 * torch.randn(20, 20, 20, generator=g)
    p = G.pilot_estimate(y, sigma_mm=3.0, spacing=(3.0, 3.0, 3.0))
    assert p.shape == y.shape
    assert float(p.std()) < 0.3 * float(y.std())
    assert abs(float(p.mean()) - float(y.mean())) < 1e-3
    p2 = G.pilot_estimate(y.numpy(), sigma_vox=1.0)
    assert torch.allclose(p, p2, atol=1e-5)
    with pytest.raises(InputError):
        G.pilot_estimate(y, sigma_mm=2.0)  # no spacing
    # the smoothing agrees with scipy's Gaussian filter (reflect boundary ~ scipy 'reflect')
    from scipy import ndimage as ndi
    ref = ndi.gaussian_filter(y.numpy().astype(np.float64), 1.0, mode="mirror", truncate=3.0)
    assert np.abs(p2.numpy() - ref).max() < 1e-4
    # batch axes are carried along untouched with ndim
    pb = G.gaussian_smooth(y[None, None], 1.0, ndim=3)
    assert pb.shape == (1, 1, 20, 20, 20) and torch.allclose(pb[0, 0], p2, atol=1e-6)
