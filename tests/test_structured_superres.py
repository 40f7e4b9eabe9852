"""Region-modulated training noise (SAM-DiffSR, Wang et al. 2024) and its sampling correction.

Exact parts: the law of the modulated noise (mean shift per region, identity covariance) and of
the modulated forward process, in closed form; with the exact denoiser of a Gaussian toy under
the modulated process, sampling through ``RegionShifted`` gives the exact law within the floor
of two exact sample sets of the same size (and sampling without the correction does not).
Tolerances: ``TOL`` floors (the floor is the largest of 8 pairs of exact sets); seeds fixed first.
"""

import pytest
import torch

import diffinfer as di
from diffinfer.region_noise import (RegionShifted, intensity_regions, modulated_noise, region_loss, region_shift,
                                    region_values)
from diffinfer.toys.gaussian_mixture import GaussianMixture
from diffinfer.toys.random_problem import floors, score
from diffinfer.toys.region_gaussian import modulated_denoiser, region_gaussian

F64 = torch.float64
TOL = 2.5


def _labels():
    """A fixed 3-region segmentation of a 4x4 image ``[1, 1, 4, 4]``."""
    img = torch.tensor([[-1.0, -1.0, 0.0, 0.9],
                        [-1.0, 0.1, 0.8, 0.9],
                        [-0.9, 0.0, 0.7, -0.2],
                        [-1.0, -1.0, 0.6, -0.8]], dtype=F64)[None, None]
    return intensity_regions(img, (-0.5, 0.5))


def test_intensity_regions_and_shift_map():
    lab = _labels()
    assert lab.shape == (1, 1, 4, 4) and set(lab.unique().tolist()) == {0, 1, 2}
    assert lab[0, 0, 0, 0] == 0 and lab[0, 0, 1, 1] == 1 and lab[0, 0, 0, 3] == 2
    v = region_values(3, 0.5)
    torch.testing.assert_close(v, torch.tensor([-0.5, 0.0, 0.5], dtype=F64))
    m = region_shift(lab, v)
    for k in range(3):
        assert (m[lab == k] == v[k]).all()
    with pytest.raises(ValueError, match="one value per region"):
        region_shift(lab, v[:2])
    with pytest.raises(ValueError, match="increasing"):
        intensity_regions(torch.zeros(1, 1, 2, 2), (0.5, 0.1))


def test_modulated_noise_is_the_shifted_normal_bit_for_bit():
    shift = region_shift(_labels(), region_values(3, 0.7)).expand(8, 1, 4, 4)
    a = modulated_noise(shift, torch.Generator().manual_seed(5))
    eps = torch.randn(shift.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert torch.equal(a, eps + shift)


@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_modulated_noise_law_mean_shift_per_region_covariance_unchanged(scale):
    """N(m, I) with m the region values: sample mean and covariance against the closed form,
    within the floor of two exact N(m, I) sets of the same size."""
    n = 2000
    m = region_shift(_labels(), region_values(3, scale))  # [1, 1, 4, 4]
    x = modulated_noise(m.expand(n, 1, 4, 4), torch.Generator().manual_seed(11)).reshape(n, -1)
    law = GaussianMixture(m.reshape(1, -1), torch.eye(16, dtype=F64)[None])
    fl, sc = floors(law, n), score(x, law, seed=0)
    assert sc["mean"] <= TOL * fl["mean"] and sc["cov"] <= TOL * fl["cov"], (sc, fl)
    # and the unshifted law is refused: the mean error is far outside the floor
    plain = GaussianMixture(torch.zeros(1, 16, dtype=F64), torch.eye(16, dtype=F64)[None])
    assert score(x, plain, seed=0)["mean"] > 2 * TOL * fl["mean"]


def test_the_loss_is_the_modulated_forward_process():
    """region_loss uses x_t = a x0 + s (eps + m) and the target of (x0, eps + m): a network that
    knows x0 and returns the exact x0 has zero loss; its derived noise is eps + m; the law of
    x_t given x0 is N(a x0 + s m, s^2 I) (moments within floors)."""
    proc = di.VP()
    n, t = 2000, 0.4
    x0 = torch.linspace(-1, 1, 16, dtype=F64).reshape(1, 1, 4, 4).expand(n, 1, 4, 4)
    m = region_shift(_labels(), region_values(3, 0.8), like=x0)
    seen = {}

    def net(x, tt):
        seen["x"] = x
        return x0

    den = di.Denoiser(net, proc, prediction="x0")
    loss = region_loss(den, x0, m, t=torch.full((n,), t, dtype=F64), generator=torch.Generator().manual_seed(2))
    assert float(loss) == 0.0
    c = proc.at(t)
    a, s = float(c.alpha), float(c.sigma)
    g = torch.Generator().manual_seed(2)
    # region_loss draws the times first only when none are given; here the noise is the first draw
    eps = torch.randn(x0.shape, generator=g, dtype=F64)
    torch.testing.assert_close(seen["x"], a * x0 + s * (eps + m), rtol=0, atol=1e-12)
    law = GaussianMixture((a * x0[0] + s * m[0]).reshape(1, -1), (s * s * torch.eye(16, dtype=F64))[None])
    fl, sc = floors(law, n), score(seen["x"].reshape(n, -1), law, seed=0)
    assert sc["mean"] <= TOL * fl["mean"] and sc["cov"] <= TOL * fl["cov"], (sc, fl)
    eps_prime = den.predict(seen["x"], torch.full((n,), t, dtype=F64)).eps
    torch.testing.assert_close(eps_prime, eps + m, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="shape"):
        region_loss(den, x0, m[:, :, :2])


# --- the sampling correction on a Gaussian toy -------------------------------------------------
SOLVERS = [("ddpm", 50), ("dpmpp-2m-sde", 30), ("dpmpp-2m", 20)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("solver,steps", SOLVERS)
def test_corrected_sampling_gives_the_exact_law(seed, solver, steps):
    proc = di.VP()
    mu, C, m = region_gaussian(seed)
    den = modulated_denoiser(mu, C, m, proc)
    n = 1000
    target = GaussianMixture(mu[None], C[None])
    fl = floors(target, n)
    shift = m.expand(n, -1).contiguous()
    x = di.sample(RegionShifted(den, shift), shape=(n, mu.numel()), dtype=F64, solver=solver, steps=steps, seed=3).x
    sc = score(x, target, seed=1)
    ratios = {k: sc[k] / fl[k] for k in ("sw", "mean", "cov")}
    assert max(ratios.values()) <= TOL, ratios
    # without the correction (the paper's unchanged reverse process from N(0, I)): far off
    y = di.sample(den, shape=(n, mu.numel()), dtype=F64, solver=solver, steps=steps, seed=3).x
    sy = score(y, target, seed=1)
    assert max(sy[k] / fl[k] for k in ("sw", "mean")) > 3 * TOL, sy


@pytest.mark.parametrize("seed", [0, 1])
def test_the_corrected_view_is_the_ordinary_exact_denoiser(seed):
    """Closed form: the exact modulated denoiser seen through RegionShifted at x~ is the exact
    ordinary-process denoiser of N(mu, C) at x~, both x0 and eps (every solver's inputs)."""
    proc = di.VP()
    mu, C, m = region_gaussian(seed)
    den = modulated_denoiser(mu, C, m, proc)
    ordinary = GaussianMixture(mu[None], C[None]).denoiser(proc)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50, 6, generator=g, dtype=F64) * 1.5
    t = torch.rand(50, generator=g, dtype=F64) * 0.98 + 0.01
    got = RegionShifted(den, m.expand(50, -1)).predict(x, t)
    want = ordinary.predict(x, t)
    torch.testing.assert_close(got.x0, want.x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got.eps, want.eps, rtol=1e-10, atol=1e-10)
    # and not the modulated model used as an ordinary one (the paper's unchanged reverse process)
    assert (den.predict(x, t).x0 - want.x0).abs().max() > 0.1


def test_the_wrapper_selects_rows_and_checks_shapes():
    proc = di.VP()
    mu, C, m = region_gaussian(0)
    den = modulated_denoiser(mu, C, m, proc)
    shift = torch.stack([m, 2 * m, 3 * m])
    w = RegionShifted(den, shift)
    x = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 0.5, dtype=F64)
    sub = w.select(torch.tensor([2, 0]))
    torch.testing.assert_close(sub.predict(x[[2, 0]], t[:2]).eps, w.predict(x, t).eps[[2, 0]])
    with pytest.raises(ValueError, match="shape"):
        w.predict(x[:2], t[:2])
    with pytest.raises(ValueError, match="NaN"):
        RegionShifted(den, torch.full((3, 6), float("nan")))


# --- the digits task and the command line --------------------------------------------------------
def test_digits_degradation_and_residual_shift():
    """avg-pool then nearest upsampling: the residual hr - up(lr) has zero mean on every 2x2
    block; the shift map is a function of the low-resolution input only (known when sampling)."""
    from diffinfer.zoo import superres_digits as sr
    hr = torch.linspace(-1, 1, 2 * 64, dtype=F64).reshape(2, 1, 8, 8)
    up = sr.upsample(sr.degrade(hr))
    res = torch.nn.functional.avg_pool2d(hr - up, 2)
    torch.testing.assert_close(res, torch.zeros_like(res), rtol=0, atol=1e-12)
    m = sr.shift_for(up, 0.5)
    assert m.shape == up.shape and set(m.unique().tolist()) <= {-0.5, 0.0, 0.5}
    torch.testing.assert_close(sr.shift_for(sr.upsample(sr.degrade(hr + 0.0)), 0.5), m)


def test_cli_demo_and_bad_option(capsys, tmp_path):
    from diffinfer.cli import main
    with pytest.raises(SystemExit) as e:
        main(["structured", "superres", "--scale", "-1"])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("diffinfer") and "--scale" in err[0], err
    code = main(["structured", "superres", "--steps", "2", "--sample-steps", "3", "--n", "16", "--out", str(tmp_path / "s.png")])
    assert code == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "region noise, corrected" in out and "plain noise" in out
    assert (tmp_path / "s.png").is_file()
