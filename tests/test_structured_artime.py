"""Per-element times (``diffinfer.element_times``; AR-Diffusion, Wu et al. 2023) on an exact
oracle: a stationary Gaussian AR(1) sequence (``toys.gaussian_sequence.GaussianAR``).

With element ``l`` at its own time, ``E[x0 | x_t] = mu + Gamma A (A Gamma A + S^2)^{-1}
(x_t - A mu)`` is linear, so:

- the oracle is checked against an independent closed form (the information form with the
  AR(1) process's tridiagonal precision) and against the one-component ``GaussianMixture``;
- a uniform field is the ordinary solver, bitwise, for every supported solver (one step and
  a whole solve); one DDIM step on a non-uniform field is the per-element DDIM formula;
- a deterministic solve over a non-uniform (AR-Diffusion anchor) field is an affine map, so
  its output law is computed exactly (the solve of the mean and of the columns of the
  initial law's Cholesky factor): it must lie within the floor of two exact sample sets
  (``N_FLOOR`` samples, worst of 8 pairs) and converge at the solver's order;
- the stream (front element leaves at ``t = 0``, a new one enters at ``t = 1``) is exactly the
  full-sequence anchor solve where that holds (rectified flow: no signal at ``t = 1``; a
  Markov model with one clean context element), and its sampled lag-0 / lag-1 covariances lie
  within the floor of exact AR(1) sequences of the same size;
- rolling and plain forecasts sample the exact predictive law (AR(2)) within the floor.
Seeds were fixed before the tolerances were set.
"""
import pytest
import torch

import diffinfer as di
from diffinfer.element_times import (SUPPORTED, anchor, check_solver, forecast, iterate_field, sample_field,
                                     stream, validate_field)
from diffinfer.rng import make_rng
from diffinfer.toys.gaussian_mixture import GaussianMixture
from diffinfer.toys.gaussian_sequence import GaussianAR, gaussian_crps

F64 = torch.float64
AR = GaussianAR.ar1(0.8, 0.36, mean=0.3)  # stationary variance 1, lag-1 covariance 0.8
L = 16
GAMMA = AR.covariance(L)
N_FLOOR = 4000
FIELD_SOLVERS = [n for n in di.solvers.names() if type(di.solvers.get(n)) in SUPPORTED]
DETERMINISTIC = [n for n in FIELD_SOLVERS if not di.solvers.get(n).stochastic]
PROCESSES = {"vp": di.VP(), "flow": di.RectifiedFlow()}


def cov_floor(n: int = N_FLOOR, repeats: int = 8, mean: bool = False) -> float:
    """Largest covariance-entry error of ``n`` exact samples (known mean), worst of ``repeats``
    (``mean=True``: the largest error of the sample mean instead)."""
    worst = 0.0
    for r in range(repeats):
        d = AR.sample(n, L, seed=1000 + r) - AR.mean
        err = d.mean(0).abs().max() if mean else (d.T @ d / n - GAMMA).abs().max()
        worst = max(worst, float(err))
    return worst


FLOOR = cov_floor()
MEAN_FLOOR = cov_floor(mean=True)


def exact_law(den, solver: str, field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[L]`` and covariance ``[L, L]`` of a deterministic solve over ``field`` started
    from the exact law at ``field[0]``: the model is linear, so the solve is affine and maps
    ``m + C^{1/2} z`` to ``out(m) + (out(m + C^{1/2} e_j) - out(m))_j z``."""
    P = den.process
    a = P.alpha(field[0]).expand(L)
    s = P.sigma(field[0]).expand(L)
    m = a * AR.mean
    root = torch.linalg.cholesky(a[:, None] * GAMMA * a[None, :] + torch.diag(s * s))
    x = torch.cat([m[None], m[None] + root.T]).reshape(L + 1, 1, L)
    out = sample_field(den, field, x_T=x, solver=solver).x.reshape(L + 1, L)
    d = out[1:] - out[0]
    return out[0], d.T @ d


# --- the oracle ---------------------------------------------------------------------------

def test_oracle_matches_the_information_form_and_the_one_component_mixture():
    g = torch.Generator().manual_seed(0)
    P = di.VP()
    phi, q, mu = 0.8, 0.36, 0.3
    Q = torch.diag(torch.full((L,), 1 + phi * phi, dtype=F64))  # AR(1) precision, tridiagonal
    Q[0, 0] = Q[-1, -1] = 1.0
    Q -= torch.diag(torch.full((L - 1,), phi, dtype=F64), 1) + torch.diag(torch.full((L - 1,), phi, dtype=F64), -1)
    Q /= q
    for _ in range(5):
        t = torch.rand(L, dtype=F64, generator=g) * 0.98 + 0.01  # [L] every element its own time
        a, s = P.alpha(t), P.sigma(t)
        x = torch.randn(3, 1, L, dtype=F64, generator=g)
        ours = AR.posterior_mean(x, a, s).reshape(3, L)
        prec = Q + torch.diag(a * a / (s * s))
        info = mu + torch.linalg.solve(prec, (a / (s * s))[:, None] * (x.reshape(3, L) - a * mu).T).T
        assert torch.allclose(ours, info, rtol=0, atol=1e-12)
        via_denoiser = AR.denoiser(P).predict(x, t.reshape(1, 1, L)).x0.reshape(3, L)  # the time-field path
        assert torch.allclose(via_denoiser, ours, rtol=0, atol=1e-12)
    mixture = GaussianMixture(torch.full((1, L), mu, dtype=F64), GAMMA[None])
    x = torch.randn(4, L, dtype=F64, generator=g)
    for t in (0.2, 0.7):
        assert torch.allclose(AR.denoiser(P).x0(x, t), mixture.posterior_mean(x, P, t), rtol=0, atol=1e-12)
    # clean elements (sigma = 0) are returned as they are; pure-noise ones (alpha = 0) are ignored
    t = torch.tensor([0.0] * 4 + [0.5] * 8 + [1.0] * 4, dtype=F64)
    F = di.RectifiedFlow()
    x0 = AR.posterior_mean(x, F.alpha(t), F.sigma(t))
    assert torch.allclose(x0[:, :4], x[:, :4], atol=1e-12)
    y = x.clone()
    y[:, 12:] = torch.randn(4, 4, dtype=F64, generator=g)
    assert torch.allclose(AR.posterior_mean(y, F.alpha(t), F.sigma(t))[:, :12], x0[:, :12], atol=1e-12)


def test_ar_autocovariance_fit_and_predictive_closed_forms():
    k = torch.arange(6, dtype=F64)
    assert torch.allclose(AR.autocov(6), 0.36 * 0.8 ** k / (1 - 0.64), atol=1e-14)
    ar2 = GaussianAR([1.3, -0.6], 0.1, 0.0)
    g = ar2.autocov(12)  # Yule-Walker equations hold at every lag
    assert torch.allclose(g[2:], 1.3 * g[1:-1] - 0.6 * g[:-2], atol=1e-12)
    assert abs(float(g[0] - 1.3 * g[1] + 0.6 * g[2]) - 0.1) < 1e-12
    fitted = GaussianAR.fit(ar2.sample(1, 20000, seed=3)[0], order=2)
    assert torch.allclose(fitted.phi, ar2.phi, atol=0.03)  # standard errors ~0.006
    m, C = AR.predictive(torch.tensor([0.1, 1.2], dtype=F64), 3)
    h = torch.arange(1, 4, dtype=F64)
    assert torch.allclose(m, 0.3 + 0.8 ** h * (1.2 - 0.3), atol=1e-12)
    assert torch.allclose(C.diagonal(), 0.36 * (1 - 0.64 ** h) / 0.36, atol=1e-12)
    with pytest.raises(ValueError, match="not stationary"):
        GaussianAR([1.0])


# --- solvers on a field -------------------------------------------------------------------

@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("solver", FIELD_SOLVERS)
def test_a_uniform_field_is_the_ordinary_solver_bitwise(solver, proc):
    P = PROCESSES[proc]
    den = AR.denoiser(P)
    ts = di.grids.resolve(P, 8, None)
    ref = di.sample(den, shape=(3, 1, L), dtype=F64, solver=solver, ts=ts, seed=4).x
    for field in (ts[:, None].expand(-1, L), ts[:, None, None].expand(-1, 1, L), ts[:, None]):
        assert torch.equal(sample_field(den, field, shape=(3, 1, L), dtype=F64, solver=solver, seed=4).x, ref)
    x = torch.randn(3, 1, L, dtype=F64, generator=torch.Generator().manual_seed(5))  # one step
    one = next(di.iterate(den, di.solvers.get(solver), x, ts, make_rng(6, 3, "cpu"))).x
    k, step = next(iterate_field(den, solver, x, ts[:, None].expand(-1, L), make_rng(6, 3, "cpu")))
    assert k == 0 and torch.equal(step, one)


def test_one_step_on_a_nonuniform_field_is_the_per_element_formula():
    P = di.VP()
    den = AR.denoiser(P)
    t0 = torch.linspace(0.3, 0.9, L, dtype=F64)
    t1 = t0 - torch.linspace(0.0, 0.2, L, dtype=F64)  # element 0 does not move
    x = torch.randn(4, 1, L, dtype=F64, generator=torch.Generator().manual_seed(7))
    _, out = next(iterate_field(den, "ddim", x, torch.stack([t0, t1])))
    a0, s0, a1, s1 = P.alpha(t0), P.sigma(t0), P.alpha(t1), P.sigma(t1)
    x0 = AR.posterior_mean(x, a0, s0)
    want = (s1 / s0) * x + (a1 - s1 / s0 * a0) * x0
    assert torch.allclose(out, want, rtol=0, atol=1e-13)
    assert torch.equal(out[..., 0], x[..., 0])
    # Euler in t on the probability-flow ODE (reads eps): x' = (1 - f dt) x - g^2 dt / (2 sigma) eps
    _, out = next(iterate_field(den, di.solvers.EulerMaruyama(diffusion=0.0), x, torch.stack([t0, t1])))
    c, dt = P.at(t0), t0 - t1
    eps = (x - a0 * x0) / s0
    want = (1 - c.f * dt) * x - 0.5 * c.g2 * dt / s0 * eps
    assert torch.allclose(out, want, rtol=0, atol=1e-12)


class EpsNet:
    """The oracle as an eps-prediction network with per-element times: ``(x - a x0_hat) / s``
    (0 where ``s = 0``)."""

    takes_time_field = True

    def __init__(self, process):
        self.process, self.x0 = process, AR.network(process)

    def __call__(self, x, t):
        t = t.reshape((-1,) + (1,) * (x.dim() - 1)) if t.dim() == 1 else t
        s = self.process.sigma(t).expand(x.shape)
        eps = (x - self.process.alpha(t) * self.x0(x, t)) / torch.where(s > 0, s, 1.0)
        return torch.where(s > 0, eps, 0.0)  # finished (clean) elements: any eps is consistent


@pytest.mark.parametrize("solver", ["dpmpp-2m", "euler-maruyama"])
def test_an_eps_network_on_a_field_agrees_with_the_x0_network(solver):
    """The field's prediction-type conversion (per-entry coefficients) and each group's share
    of a model-given ``eps``: the same solve from an eps- and an x0-prediction network."""
    P = di.VP()
    field = anchor(di.grids.resolve(P, 10, None), L, 2)
    x0_den, eps_den = AR.denoiser(P), di.Denoiser(EpsNet(P), P, prediction="eps")
    a = sample_field(x0_den, field, shape=(3, 1, L), dtype=F64, solver=solver, seed=8).x
    b = sample_field(eps_den, field, shape=(3, 1, L), dtype=F64, solver=solver, seed=8).x
    assert torch.allclose(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("proc", list(PROCESSES))
@pytest.mark.parametrize("solver", DETERMINISTIC + ["probability-flow euler-maruyama"])
def test_an_anchor_field_reaches_the_exact_law_within_the_floor(solver, proc):
    """(Euler-Maruyama with ``diffusion=0``: Euler in ``t`` on the probability-flow ODE, the one
    supported solver that reads ``eps``.)"""
    P = PROCESSES[proc]
    den = AR.denoiser(P)
    if solver.startswith("probability-flow"):
        solver = di.solvers.EulerMaruyama(diffusion=0.0)
    steps = 80 if di.solvers.get(solver).order > 1 else 200
    field = anchor(di.grids.resolve(P, steps, None), L, 1.5)  # fractional delays: every element its own grid
    assert bool((field[:, 1:] >= field[:, :-1]).all())  # times non-decreasing along the sequence
    mean, cov = exact_law(den, solver, field)
    if isinstance(solver, str):  # exponential integrators keep the mean exactly (linear model, mean start)
        assert float((mean - AR.mean).abs().max()) < 1e-10
    assert float((mean - AR.mean).abs().max()) <= MEAN_FLOOR
    assert float((cov - GAMMA).abs().max()) <= FLOOR, (float((cov - GAMMA).abs().max()), FLOOR)


@pytest.mark.parametrize("solver,order", [("ddim", 1), ("dpmpp-2m", 2)])
def test_the_field_solve_converges_at_the_solver_order(solver, order):
    P = di.VP()
    den = AR.denoiser(P)
    errs = [float((exact_law(den, solver, anchor(di.grids.resolve(P, n, None), L, 1.5))[1] - GAMMA).abs().max())
            for n in (20, 40, 80)]
    slopes = [torch.log2(torch.tensor(errs[i] / errs[i + 1])).item() for i in range(2)]
    assert slopes[-1] > order - 0.3, (errs, slopes)


def test_a_stochastic_solver_on_a_row_field_samples_the_law():
    """Image-row times (``[N + 1, 4, 1]`` on ``[B, 4, 4]``), DPM-Solver++(2M) SDE: the sampled
    covariance within the floor of exact sets of the same size."""
    n = 1000
    P = di.VP()
    field = anchor(di.grids.resolve(P, 40, None), 4, 3.0)[:, :, None]
    x = sample_field(AR.denoiser(P), field, shape=(n, 4, 4), dtype=F64, solver="dpmpp-2m-sde", seed=1).x
    d = x.reshape(n, L) - AR.mean
    assert float((d.T @ d / n - GAMMA).abs().max()) <= cov_floor(n)


# --- streaming and forecasting ------------------------------------------------------------

@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "dpmpp-3m", "unipc"])
def test_the_stream_is_the_full_sequence_solve(solver):
    P = di.RectifiedFlow()
    den = AR.denoiser(P)
    base = di.grids.resolve(P, 12, None)
    B, count, shift = 3, 10, 2
    out = torch.stack(list(stream(den, base, shift, count, B, solver=solver, seed=5, dtype=F64)), -1)
    rng = make_rng(5, B, "cpu")  # the noise the stream draws, element by element
    z = torch.cat([rng.randn((1, 1), dtype=F64) for _ in range(count)], -1)
    field = anchor(base, count, shift)
    res = sample_field(den, field, x_T=z, solver=solver)
    assert torch.allclose(out, res.x, rtol=0, atol=1e-12)
    assert res.nfe == field.shape[0] - 1 == 12 + (count - 1) * shift  # one model call per global step
    nfe0 = den.nfe
    for _ in stream(den, base, shift, count, B, solver=solver, seed=5, dtype=F64):
        pass
    assert den.nfe - nfe0 == res.nfe
    ctx0 = torch.stack(list(stream(den, base, shift, count, B, solver=solver, seed=5, dtype=F64, context=0)), -1)
    assert not torch.allclose(ctx0, out, atol=1e-3)  # without the clean context the elements lose their link


def lag_stats(x: torch.Tensor) -> torch.Tensor:
    """Pooled lag-0 and lag-1 covariances of sequences ``[B, n]`` (known mean)."""
    d = x - AR.mean
    return torch.stack([(d * d).mean(), (d[:, 1:] * d[:, :-1]).mean()])


@pytest.mark.parametrize("solver", ["dpmpp-2m", "unipc"])
def test_the_stream_has_the_stationary_covariance(solver):
    B, count = 2000, 24
    target = AR.autocov(2)
    floor = max(float((lag_stats(AR.sample(B, count, seed=200 + r)) - target).abs().max()) for r in range(8))
    P = di.VP()
    out = torch.stack(list(stream(AR.denoiser(P), di.grids.resolve(P, 40, None), 2, count, B, solver=solver,
                                  seed=6, dtype=F64)), -1)[:, 0]
    assert out.shape == (B, count)
    err = float((lag_stats(out) - target).abs().max())
    assert err <= floor, (err, floor)


@pytest.mark.parametrize("shift", [0, 1, 3])
def test_forecasts_sample_the_exact_predictive_law(shift):
    ar2 = GaussianAR([1.34, -0.65], 0.024, -0.55)  # about the AR(2) fitted to yearly sunspots
    hist = ar2.sample(1, 8, seed=9)
    horizon, n = 12, 2000
    m, C = ar2.predictive(hist[0], horizon)
    root = torch.linalg.cholesky(C)
    g = torch.Generator().manual_seed(300)

    def err(fc):
        return max(float((fc.mean(0) - m).abs().max()), float((fc.var(0) - C.diagonal()).abs().max()))
    floor = max(err(m + torch.randn(n, horizon, dtype=F64, generator=g) @ root.T) for _ in range(8))
    P = di.VP()
    fc = forecast(ar2.denoiser(P), hist.reshape(1, 1, 8).expand(n, 1, 8), horizon,
                  di.grids.resolve(P, 40, None), shift=shift, seed=2)
    assert fc.shape == (n, 1, horizon)
    assert err(fc[:, 0]) <= floor, (err(fc[:, 0]), floor)


def test_gaussian_crps_matches_the_ensemble_crps():
    from diffinfer.inverse import crps_samples
    x = torch.randn(200000, dtype=F64, generator=torch.Generator().manual_seed(1)) * 2.0 + 0.5
    assert abs(crps_samples(x[:, None], torch.tensor([1.7], dtype=F64)) - float(gaussian_crps(0.5, 2.0, 1.7))) < 0.01


# --- clear errors -------------------------------------------------------------------------

@pytest.mark.parametrize("name,why", [("adaptive", "no fixed grid"), ("heun", "twice per step"),
                                      ("pc", "corrector"), ("evodiff", "all entries")])
def test_solvers_that_cannot_step_a_field_are_refused(name, why):
    with pytest.raises(ValueError, match=f"cannot step a time field: .*{why}.*; valid: ddim, ddpm"):
        check_solver(name)
    field = anchor(di.grids.resolve(di.VP(), 4, None), L, 1)
    with pytest.raises(ValueError, match="cannot step a time field"):
        sample_field(AR.denoiser(di.VP()), field, shape=(2, 1, L), solver=name, seed=0)


def test_bad_fields_and_models_are_refused():
    P = di.VP()
    ts = di.grids.resolve(P, 4, None)
    with pytest.raises(ValueError, match="never increase, but it does at step 2"):
        validate_field(torch.tensor([[1.0, 1.0], [0.5, 0.5], [0.6, 0.2]]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        validate_field(torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(ValueError, match="never moves"):
        validate_field(torch.ones(3, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        sample_field(AR.denoiser(P), ts[:, None].expand(-1, 5), shape=(2, 1, L), seed=0)
    plain = di.Denoiser(lambda x, t: x, P, prediction="x0")  # one time per row only
    with pytest.raises(ValueError, match="takes_time_field = True"):
        plain.predict(torch.zeros(2, 1, L), torch.full((1, 1, L), 0.5))
    with pytest.raises(ValueError, match="ending at t = 0"):
        next(stream(AR.denoiser(P), torch.linspace(1.0, 0.1, 5), 1, 3, 2))
    with pytest.raises(ValueError, match="integer >= 1"):
        next(stream(AR.denoiser(P), ts, 0.5, 3, 2))
