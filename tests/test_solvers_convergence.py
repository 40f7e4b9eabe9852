"""Convergence order of the deterministic solvers against the exact probability-flow endpoint.

Model: the exact denoiser of a 3-component Gaussian mixture in 2-D, float64. Reference:
``pf_ode_solution`` (SciPy DOP853 at 1e-10). Grids stop at ``t_min = 1e-2`` without the
final denoise (``final_zero=False``) so the error is the ODE's: VP (linear) uniform in
log-SNR on ``[1, 1e-2]``, rectified flow uniform in ``t`` on ``[1, 1e-2]`` (it starts where
``alpha = 0``). The fitted log-log slope of max error vs steps must be at least the
declared order minus ``SLOPE_TOL``. Multistep solvers run with ``lower_order_final=False``
(lowering the last steps' order is a small-step-count heuristic that caps the slope).
"""
import math

import numpy as np
import pytest
import torch

from diffinfer import VP, Denoiser, RectifiedFlow, sample, solvers, grids
from diffinfer.toys import GaussianMixture
from diffinfer.toys.reference import pf_ode_solution

SLOPE_TOL = 0.25
T_MIN = 1e-2
STEPS = [20, 40, 80, 160]
EXACT_START_STEPS = [40, 80, 160, 320]  # past the pre-asymptotic range of the 3M update


def _mixture():
    means = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]], dtype=torch.float64)
    return GaussianMixture(means, 0.25 * torch.eye(2, dtype=torch.float64).expand(3, 2, 2).clone())


PROCESSES = {"vp": lambda: VP("linear"), "rf": RectifiedFlow}


def _grid(process, n):
    if isinstance(process, RectifiedFlow):
        return grids.uniform(process, n, t_max=1.0, t_min=T_MIN, final_zero=False)
    return grids.logsnr(process, n, t_max=1.0, t_min=T_MIN, final_zero=False)


_CACHE = {}


def _problem(name):
    """(denoiser, starting noise [8, 2], exact endpoint) for a process, built once."""
    if name not in _CACHE:
        process = PROCESSES[name]()
        den = _mixture().denoiser(process)
        x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        x = x * float(process.sigma(1.0))
        _CACHE[name] = (den, x, pf_ode_solution(den, x, 1.0, T_MIN))
    return _CACHE[name]


def _slope(steps, errors):
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


CASES = [
    ("euler", {}, 1, STEPS),
    ("ddim", {}, 1, STEPS),
    ("heun", {}, 2, STEPS),
    ("dpmpp-2m", {"lower_order_final": False}, 2, STEPS),
    ("unipc", {"variant": "bh1", "order": 2, "lower_order_final": False}, 2, STEPS),
    ("unipc", {"variant": "bh2", "order": 2, "lower_order_final": False}, 2, STEPS),
    ("unipc", {"variant": "bh1", "order": 3, "lower_order_final": False}, 3, STEPS),
    ("unipc", {"variant": "bh2", "order": 3, "lower_order_final": False}, 3, STEPS),
    # EVODiff's variance-optimal weight switches between slopes before the asymptotic regime
    ("evodiff", {}, 2, [40, 80, 160, 320]),
]


@pytest.mark.parametrize("process_name", ["vp", "rf"])
@pytest.mark.parametrize("name,options,order,steps", CASES)
def test_declared_order(process_name, name, options, order, steps):
    den, x, ref = _problem(process_name)
    assert solvers.get(name, **options).order == order
    errors = []
    for n in steps:
        out = sample(den, x, solver=name, ts=_grid(den.process, n), **options).x
        errors.append((out - ref).abs().max().item())
    slope = _slope(steps, errors)
    assert slope >= order - SLOPE_TOL, f"{name} {options}: slope {slope:.2f}, errors {errors}"
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc_corrector_raises_order_on_vp(variant, order):
    """UniC adds one order on interior steps (Zhao et al. 2023, Theorem 3.3)."""
    den, x, ref = _problem("vp")
    errors = [(sample(den, x, solver="unipc", ts=_grid(den.process, n), order=order, variant=variant,
                      lower_order_final=False).x - ref).abs().max().item() for n in STEPS]
    assert _slope(STEPS, errors) >= order + 1 - 0.4


def _exact_start_errors(den, x, ref, solver):
    """Errors of a 3-step multistep solver started from the exact trajectory: the explicit
    state is seeded with exact history at the first two usable grid points (rectified
    flow's ``t = 1`` has ``lambda = -inf`` and carries no slope information)."""
    errors = []
    for n in EXACT_START_STEPS:
        ts = _grid(den.process, n)
        k0 = 1 if float(den.process.alpha(ts[0])) == 0.0 else 0
        exact = [pf_ode_solution(den, x, 1.0, ts[k]) if k > 0 else x for k in (k0, k0 + 1, k0 + 2)]
        state = solver.init(den, exact[2], ts)
        state = state.replace(history=((k0, den.x0(exact[0], ts[k0])), (k0 + 1, den.x0(exact[1], ts[k0 + 1]))))
        xi = exact[2]
        for i in range(k0 + 2, n):
            xi, state = solver.step(den, xi, i, state)
        errors.append((xi - ref).abs().max().item())
    return errors


@pytest.mark.parametrize("process_name", ["vp", "rf"])
def test_dpmpp_3m_third_order_from_exact_start(process_name):
    """With exact history the 3M update is third order. From the noise its diffusers-style
    warm-up (a first-order first step, local error O(h^2)) caps the asymptotic slope at 2,
    so the order of the update itself is measured from an exact start."""
    den, x, ref = _problem(process_name)
    solver = solvers.get("dpmpp-3m", lower_order_final=False)
    errors = _exact_start_errors(den, x, ref, solver)
    assert _slope(EXACT_START_STEPS, errors) >= 3 - SLOPE_TOL, errors
    # and from the noise, with the warm-up, at least second order
    warm = [(sample(den, x, solver=solver, ts=_grid(den.process, n)).x - ref).abs().max().item() for n in STEPS]
    assert _slope(STEPS, warm) >= 2 - SLOPE_TOL, warm


def test_dpmpp_3m_diffusers_weights_are_second_order():
    """diffusers' 3M weights (``third_order='diffusers'``) halve the second-difference term:
    from the same exact start the slope is 2, not 3, and the error is larger."""
    den, x, ref = _problem("vp")
    compat = _exact_start_errors(den, x, ref, solvers.get("dpmpp-3m", lower_order_final=False,
                                                          third_order="diffusers"))
    taylor = _exact_start_errors(den, x, ref, solvers.get("dpmpp-3m", lower_order_final=False))
    assert 2 - SLOPE_TOL <= _slope(EXACT_START_STEPS, compat) < 2.5
    assert compat[-1] > 5 * taylor[-1]


def test_dpmpp_3m_exact_for_quadratic_prediction():
    """A model whose data prediction is a quadratic in ``lambda`` (independent of x): the
    exponential integrator with exact history then has no truncation error, so one 3M step
    from exact history equals the quadrature of the exact solution."""
    from scipy.integrate import quad

    process = VP("linear")
    coef = (1.0, 0.3, -0.2)

    def x0_of_t(t):
        lam = 0.5 * float(process.logsnr(t))
        return coef[0] + coef[1] * lam + coef[2] * lam * lam

    den = Denoiser(lambda x, t: torch.full_like(x, x0_of_t(t[0])), process, prediction="x0")
    ts = grids.logsnr(process, 12, t_max=0.9, t_min=0.05, final_zero=False)
    i = 5
    x_i = torch.full((1, 1), 0.4, dtype=torch.float64)
    lam_i, lam_n = 0.5 * float(process.logsnr(ts[i])), 0.5 * float(process.logsnr(ts[i + 1]))
    s_i, s_n = float(process.sigma(ts[i])), float(process.sigma(ts[i + 1]))
    integral = quad(lambda lam: math.exp(lam) * (coef[0] + coef[1] * lam + coef[2] * lam * lam), lam_i, lam_n,
                    epsabs=1e-14, epsrel=1e-14)[0]
    exact = s_n / s_i * 0.4 + s_n * integral  # x_t = (s_t/s_s) x_s + s_t int e^lam x0 dlam
    for form, should_be_exact in (("taylor", True), ("diffusers", False)):
        solver = solvers.get("dpmpp-3m", lower_order_final=False, third_order=form)
        state = solver.init(den, x_i, ts)
        state = state.replace(history=((i - 2, den.x0(x_i, ts[i - 2])), (i - 1, den.x0(x_i, ts[i - 1]))))
        out, _ = solver.step(den, x_i, i, state)
        err = abs(float(out) - exact)
        assert (err < 1e-12) == should_be_exact, (form, err)


@pytest.mark.parametrize("process_name", ["vp", "rf"])
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adaptive_error_tracks_tolerance(process_name, method):
    """The adaptive solver's error falls with its tolerance and stays near it; it reports
    its NFE and accepted / rejected step counts."""
    den, x, ref = _problem(process_name)
    ts = _grid(den.process, 4)
    errors = []
    for tol in (1e-4, 1e-7):
        den.reset_nfe()
        res = sample(den, x, solver="adaptive", ts=ts, method=method, rtol=tol, atol=tol)
        errors.append((res.x - ref).abs().max().item())
        assert res.nfe == den.nfe > 0
        assert bool((res.state.accepted >= ts.numel() - 1).all())
        assert res.state.rejected.shape == (x.shape[0],)
        stages = len(solvers.adaptive.METHODS.get(method).c)
        assert bool((res.state.evals == stages * (res.state.accepted + res.state.rejected)).all())
        assert errors[-1] < 200 * tol
    assert errors[1] < errors[0] / 30
    assert math.isfinite(errors[1])


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_order_3_exact_for_polynomial_predictions(variant):
    """UniPC order 3 from exact history, on a model whose data prediction is a polynomial in
    ``lambda`` (independent of x), where the exponential integrator's quadrature is exact:
    the UniP-3 predictor (3 points) is exact for a quadratic; the UniC-3 corrector (3 old
    points and the new one) is exact for a cubic: it replaces a wrong predicted point by
    the quadrature. The cubic also shows the predictor alone is not exact there."""
    from scipy.integrate import quad

    process = VP("linear")
    ts = grids.logsnr(process, 12, t_max=0.9, t_min=0.05, final_zero=False)
    lam = [0.5 * float(process.logsnr(t)) for t in ts]
    sig = [float(process.sigma(t)) for t in ts]

    def model(coef):
        def x0_of_lam(v):
            return sum(c * v ** k for k, c in enumerate(coef))
        den = Denoiser(lambda x, t: torch.full_like(x, x0_of_lam(0.5 * float(process.logsnr(t[0])))), process,
                       prediction="x0")
        return den, x0_of_lam

    def exact(x0_of_lam, a, b, x_a):
        integral = quad(lambda v: math.exp(v) * x0_of_lam(v), lam[a], lam[b], epsabs=1e-14, epsrel=1e-14)[0]
        return sig[b] / sig[a] * x_a + sig[b] * integral

    solver = solvers.get("unipc", order=3, variant=variant, lower_order_final=False)
    i, x_prev = 5, 0.4

    def hist(den, ks):
        one = torch.ones(1, 1, dtype=torch.float64)
        return tuple((k, den.x0(one, ts[k])) for k in ks)

    # predictor: quadratic prediction, history (i-2, i-1), no correction
    den, f = model((1.0, 0.3, -0.2))
    x_i = torch.full((1, 1), x_prev, dtype=torch.float64)
    state = solver.init(den, x_i, ts).replace(history=hist(den, (i - 2, i - 1)))
    out, _ = solver.step(den, x_i, i, state)
    assert abs(float(out) - exact(f, i, i + 1, x_prev)) < 1e-12
    # corrector: cubic prediction, history (i-3, i-2, i-1), exact x at t_{i-1}, a wrong x~_i
    den, f = model((1.0, 0.3, -0.2, 0.05))
    x_true = exact(f, i - 1, i, x_prev)
    state = solver.init(den, x_i, ts).replace(history=hist(den, (i - 3, i - 2, i - 1)), last_order=3,
                                              last_x=torch.full((1, 1), x_prev, dtype=torch.float64))
    out, new = solver.step(den, torch.full((1, 1), x_true + 0.1, dtype=torch.float64), i, state)
    assert abs(float(new.last_x) - x_true) < 1e-12, float(new.last_x) - x_true
    # and from the corrected point the order-3 predictor is not exact for a cubic
    assert abs(float(out) - exact(f, i, i + 1, x_true)) > 1e-9
