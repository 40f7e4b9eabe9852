"""Exact one-step laws of the stochastic solvers (issue #13, item 7).

From a fixed ``x`` at ``t`` a stochastic step is ``x' = m + w_z z`` (``z`` standard normal):
Gaussian with mean ``m`` and per-entry variance ``w_z^2``. Both are read exactly, in
float64, by running the step with a noise stream that returns ``z = 0`` (the mean) and
``z = 1`` (mean + ``w_z``), and compared with closed forms derived here from the process
alone (not from the solvers' helpers):

- DDPM / ancestral (Ho et al. 2020, eq. 7; Kingma et al. 2021, "Variational Diffusion
  Models", eq. 33 for any ``alpha, sigma``): ``q(x_s | x_t, x0)`` with
  ``alpha_ts = alpha_t / alpha_s``, ``sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2``:
  mean ``alpha_ts sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_ts^2 / sigma_t^2 x0``,
  variance ``sigma_ts^2 sigma_s^2 / sigma_t^2``;
- DDIM with ``eta`` (Song et al. 2021, eqs. 12 and 16): variance ``eta^2`` times DDPM's,
  mean ``alpha_s x0 + sqrt(sigma_s^2 - var) eps_hat``;
- SDE-DPM-Solver++ first order (Lu et al. 2022, "DPM-Solver++", eq. for the SDE variant):
  mean ``(sigma_s / sigma_t) e^{-h} x + alpha_s (1 - e^{-2h}) x0``, variance
  ``sigma_s^2 (1 - e^{-2h})``, ``h = lambda_s - lambda_t``;
- Euler-Maruyama on the reverse SDE (Song et al. 2021, eq. 6), and the predictor of ``pc``
  with no corrector step: mean ``x - [f x - g^2 score] dt`` (``dt = t - s > 0``), variance
  ``g^2 dt``, with ``f = d log alpha / dt`` and ``g^2 = d sigma^2/dt - 2 f sigma^2`` by
  central differences of the process.

Then the same steps against diffusers' ``DDPMScheduler`` and ``DPMSolverMultistepScheduler``
(``sde-dpmsolver++``, order 2, so the second step uses the history) on the same grid and
the same noise.
"""
import math

import pytest
import torch

from diffinfer import VP, DiscreteVP, RectifiedFlow, grids, solvers
from diffinfer.rng import SampleRNG
from diffinfer.toys import GaussianMixture

F64 = torch.float64
TOL = 1e-10


class ConstantRNG(SampleRNG):
    """Every draw is the constant ``value`` (0: the step's mean; 1: mean + noise weight)."""

    def __init__(self, batch: int, value: float):
        super().__init__([torch.Generator()] * batch)
        self.value = value

    def randn(self, shape, dtype=torch.float32, device=None):
        return torch.full((len(self),) + tuple(shape), self.value, dtype=dtype)


class FixedRNG(SampleRNG):
    """Draws come from a list of given tensors, in order."""

    def __init__(self, draws):
        super().__init__([torch.Generator()] * draws[0].shape[0])
        self.draws = list(draws)

    def randn(self, shape, dtype=torch.float32, device=None):
        return self.draws.pop(0).to(dtype)


def _mixture(dim=3):
    means = torch.tensor([[1.0, 0.0, 0.5], [-0.5, 0.8, 0.0], [-0.5, -0.8, -0.5]], dtype=F64)[:, :dim]
    return GaussianMixture(means, 0.09 * torch.eye(dim, dtype=F64).expand(3, dim, dim).clone())


def _one_step_law(process, solver, options, t, s, x):
    """(mean, noise weight) of one step from ``x`` at ``t`` to ``s`` (exact, from two runs)."""
    den = _mixture(x.shape[1]).denoiser(process)
    ts = torch.tensor([t, s], dtype=F64)
    sol = solvers.get(solver, **options)
    out = []
    for value in (0.0, 1.0):
        state = sol.init(den, x, ts, ConstantRNG(x.shape[0], value))
        out.append(sol.step(den, x, 0, state)[0])
    return out[0], out[1] - out[0], den.predict(x, t)


def _coeffs(process, t):
    tt = torch.tensor(t, dtype=F64)
    return float(process.alpha(tt)), float(process.sigma(tt))


def _ddpm_posterior(process, t, s, x, x0):
    a_t, s_t = _coeffs(process, t)
    a_s, s_s = _coeffs(process, s)
    a_ts = a_t / a_s
    v_ts = s_t ** 2 - a_ts ** 2 * s_s ** 2
    mean = a_ts * s_s ** 2 / s_t ** 2 * x + a_s * v_ts / s_t ** 2 * x0
    return mean, v_ts * s_s ** 2 / s_t ** 2


def _x():
    return torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(3))


PROCS = {"vp": lambda: VP("linear"), "cosine": lambda: VP("cosine"), "rf": RectifiedFlow}
STEPS = [(0.8, 0.6), (0.3, 0.25), (0.05, 0.01)]


@pytest.mark.parametrize("proc", list(PROCS))
@pytest.mark.parametrize("t,s", STEPS)
@pytest.mark.parametrize("solver,options", [("ddpm", {}), ("ddim", {"eta": 1.0}),
                                            ("pc", {"predictor": "ancestral", "corrector_steps": 0})])
def test_ddpm_step_is_the_exact_posterior(proc, t, s, solver, options):
    p, x = PROCS[proc](), _x()
    mean, w_z, pred = _one_step_law(p, solver, options, t, s, x)
    m_ref, var_ref = _ddpm_posterior(p, t, s, x, pred.x0)
    torch.testing.assert_close(mean, m_ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(w_z ** 2, torch.full_like(x, var_ref), atol=TOL, rtol=1e-9)


@pytest.mark.parametrize("eta", [0.3, 0.7])
@pytest.mark.parametrize("t,s", STEPS)
def test_ddim_eta_step_law(eta, t, s):
    p, x = VP("linear"), _x()
    mean, w_z, pred = _one_step_law(p, "ddim", {"eta": eta}, t, s, x)
    _, var_ddpm = _ddpm_posterior(p, t, s, x, pred.x0)
    a_s, s_s = _coeffs(p, s)
    var = eta ** 2 * var_ddpm
    torch.testing.assert_close(w_z ** 2, torch.full_like(x, var), atol=TOL, rtol=1e-9)
    torch.testing.assert_close(mean, a_s * pred.x0 + math.sqrt(s_s ** 2 - var) * pred.eps, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("proc", list(PROCS))
@pytest.mark.parametrize("t,s", STEPS)
def test_dpmpp_2m_sde_first_step_law(proc, t, s):
    p, x = PROCS[proc](), _x()
    mean, w_z, pred = _one_step_law(p, "dpmpp-2m-sde", {}, t, s, x)
    a_t, s_t = _coeffs(p, t)
    a_s, s_s = _coeffs(p, s)
    h = math.log(a_s / s_s) - math.log(a_t / s_t)
    m_ref = (s_s / s_t) * math.exp(-h) * x + a_s * (-math.expm1(-2 * h)) * pred.x0
    torch.testing.assert_close(mean, m_ref, atol=TOL, rtol=TOL)
    torch.testing.assert_close(w_z ** 2, torch.full_like(x, s_s ** 2 * -math.expm1(-2 * h)), atol=TOL, rtol=1e-9)


def _f_g2(process, t, d=1e-6):
    """``f = d log alpha/dt``, ``g^2 = d sigma^2/dt - 2 f sigma^2`` by central differences."""
    tt = torch.tensor([t - d, t + d], dtype=F64)
    la, s2 = torch.log(process.alpha(tt)), process.sigma(tt) ** 2
    f = float(la[1] - la[0]) / (2 * d)
    sig = _coeffs(process, t)[1]
    return f, float(s2[1] - s2[0]) / (2 * d) - 2 * f * sig ** 2


@pytest.mark.parametrize("proc", list(PROCS))
@pytest.mark.parametrize("t,s", STEPS)
@pytest.mark.parametrize("solver,options", [("euler-maruyama", {}), ("pc", {"corrector_steps": 0})])
def test_euler_maruyama_step_law(proc, t, s, solver, options):
    p, x = PROCS[proc](), _x()
    mean, w_z, pred = _one_step_law(p, solver, options, t, s, x)
    f, g2 = _f_g2(p, t)
    dt = t - s
    score = -pred.eps / _coeffs(p, t)[1]
    torch.testing.assert_close(mean, x - (f * x - g2 * score) * dt, atol=1e-7, rtol=1e-7)  # finite differences
    torch.testing.assert_close(w_z ** 2, torch.full_like(x, g2 * dt), atol=1e-7, rtol=1e-7)


# --- against diffusers, same grid, same noise ---------------------------------------------
diffusers = pytest.importorskip("diffusers")


def test_ddpm_matches_diffusers_ddpm_scheduler_with_the_same_noise():
    """``DDPMScheduler`` (``fixed_small``, ``prediction_type='sample'``) with our grid as its
    training table (index ``k`` holds ``alpha^2`` at ``ts[n - 1 - k]``), fed our ``x0_hat``;
    its noise is drawn from a generator we replay into our step."""
    p, n = VP("linear"), 8
    ts = grids.default(p, n).to(F64)
    den = _mixture().denoiser(p)
    sched = diffusers.DDPMScheduler(num_train_timesteps=n, clip_sample=False, prediction_type="sample",
                                    timestep_spacing="leading", steps_offset=0, variance_type="fixed_small")
    sched.alphas_cumprod = (p.alpha(ts[:-1]) ** 2).flip(0).to(F64)
    sched.set_timesteps(n)
    assert sched.timesteps.tolist() == list(range(n - 1, -1, -1))
    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    zs = [torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i), dtype=F64) for i in range(n)]
    sol = solvers.get("ddpm")
    state = sol.init(den, x, ts, FixedRNG(list(zs)))
    y = x.clone()
    for i, k in enumerate(sched.timesteps.tolist()):
        y = sched.step(den.x0(y, ts[i]), k, y, generator=torch.Generator().manual_seed(100 + i)).prev_sample
        x, state = sol.step(den, x, i, state)
        torch.testing.assert_close(x, y.to(F64), atol=1e-9, rtol=1e-9, msg=f"step {i}")


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_dpmpp_2m_sde_matches_diffusers_with_the_same_noise(final):
    process = DiscreteVP(beta_schedule="linear")
    den = _mixture().denoiser(process)
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                                  beta_schedule="linear", solver_order=2,
                                                  algorithm_type="sde-dpmsolver++", final_sigmas_type=final)
    sched.set_timesteps(10)
    sig = torch.as_tensor(sched.sigmas, dtype=F64)
    ts = torch.zeros_like(sig)
    ts[sig > 0] = process.t_from_logsnr(-2.0 * torch.log(sig[sig > 0]))
    x_T = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    zs = [torch.randn(6, 3, generator=torch.Generator().manual_seed(50 + i)) for i in range(10)]
    sol = solvers.get("dpmpp-2m-sde")
    x, state = x_T.clone(), sol.init(den, x_T, ts, FixedRNG(list(zs)))
    y = x_T.clone()
    for i, step_t in enumerate(sched.timesteps):
        eps = den.eps(y, ts[i])
        y = sched.step(eps, step_t, y, variance_noise=zs[i]).prev_sample
        x, state = sol.step(den, x, i, state)
        assert (x - y).abs().max().item() < 2e-5, f"step {i}"
