"""Stochastic solvers sample the right distribution.

With the exact Gaussian-mixture denoiser and many steps, samples of DDPM (``ddim`` with
``eta = 1``), Euler-Maruyama, predictor-corrector and DPM-Solver++(2M) SDE must be as close
to a large exact sample as exact samples of the same size are, in sliced Wasserstein-1:
the noise floor is the largest SW of ``FLOOR_DRAWS`` exact sets of size ``N`` against the
same reference, and the tolerance is ``FLOOR_FACTOR`` times it. Negative controls (a
too-coarse Euler-Maruyama run, the exact sampler of a mixture with 2.25x the component
variance) show the test can fail.

The step noise here comes from one generator for the whole batch (``BatchRNG``) for speed;
per-sample streams are checked in ``test_solvers_protocol``.
"""
import pytest
import torch

from diffinfer import VP, RectifiedFlow, sample, grids
from diffinfer.metrics import sliced_wasserstein
from diffinfer.rng import SampleRNG
from diffinfer.toys import GaussianMixture

N = 1500
N_REF = 20000
FLOOR_DRAWS = 6
FLOOR_FACTOR = 1.5


class BatchRNG(SampleRNG):
    """All rows from one generator (fast; not batch-invariant)."""

    def __init__(self, batch: int, seed: int):
        super().__init__([torch.Generator().manual_seed(seed)] * batch)

    def randn(self, shape, dtype=torch.float32, device=None):
        return torch.randn((len(self),) + tuple(shape), generator=self.generators[0], dtype=dtype)


def _sw(x, y):
    return sliced_wasserstein(x, y, p=1)

PROCESSES = {"vp": lambda: VP("linear"), "rf": RectifiedFlow}


def _mixture(var=0.04):
    means = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]], dtype=torch.float64)
    return GaussianMixture(means, var * torch.eye(2, dtype=torch.float64).expand(3, 2, 2).clone())


_REF = {}


def _reference():
    """(mixture, big exact sample, noise-floor tolerance)."""
    if not _REF:
        gm = _mixture()
        ref = gm.sample(N_REF, seed=12345)
        floor = max(_sw(gm.sample(N, seed=k), ref) for k in range(FLOOR_DRAWS))
        _REF.update(gm=gm, ref=ref, tol=FLOOR_FACTOR * floor)
    return _REF["gm"], _REF["ref"], _REF["tol"]


def _samples(den, solver, steps, **options):
    return sample(den, shape=(N, 2), solver=solver, steps=steps, seed=BatchRNG(N, 7),
                  dtype=torch.float64, **options).x


@pytest.mark.parametrize("process_name,solver,steps,options", [
    ("vp", "ddpm", 100, {}),
    ("rf", "ddpm", 100, {}),
    ("vp", "euler-maruyama", 200, {}),
    ("rf", "euler-maruyama", 200, {}),
    ("rf", "euler-maruyama", 100, {"diffusion": 0.5}),
    ("vp", "pc", 100, {"snr": 0.1}),
    ("rf", "pc", 100, {"snr": 0.1, "predictor": "ancestral"}),
    ("vp", "dpmpp-2m-sde", 50, {}),
    ("rf", "dpmpp-2m-sde", 50, {}),
])
def test_stochastic_solver_matches_exact_law(process_name, solver, steps, options):
    gm, ref, tol = _reference()
    out = _samples(gm.denoiser(PROCESSES[process_name]()), solver, steps, **options)
    assert torch.isfinite(out).all()
    dist = _sw(out, ref)
    assert dist < tol, f"{solver} {options}: SW {dist:.4f} >= tolerance {tol:.4f}"


def test_negative_controls_fail():
    """A visibly biased sampler (Euler-Maruyama, 8 steps) and the right sampler of the wrong
    law (components with 2.25x the variance) are both rejected by the same tolerance."""
    gm, ref, tol = _reference()
    coarse = _samples(gm.denoiser(VP("linear")), "euler-maruyama", 8)
    assert _sw(coarse, ref) > tol
    wrong_law = _samples(_mixture(0.09).denoiser(VP("linear")), "ddpm", 100)
    assert _sw(wrong_law, ref) > tol


def test_euler_maruyama_zero_diffusion_is_probability_flow_euler():
    """``diffusion=0`` removes the noise: EM becomes Euler in ``t`` on the probability-flow
    ODE, deterministic and needing no seed."""
    gm = _mixture()
    den = gm.denoiser(VP("linear"))
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = sample(den, x, solver="euler-maruyama", steps=30, diffusion=0.0).x
    b = sample(den, x, solver="euler-maruyama", steps=30, diffusion=0.0).x
    assert torch.equal(a, b)
    # one step by hand: x - dt * velocity
    ts = grids.default(den.process, 30)
    first = sample(den, x, solver="euler-maruyama", ts=ts[:2], diffusion=0.0).x
    v = den.velocity(x, ts[0])
    assert torch.allclose(first, x - (ts[0] - ts[1]) * v, atol=1e-12, rtol=0)


def test_em_first_step_at_alpha_zero_is_exact_frozen_solution():
    """Rectified flow at ``t = 1`` has ``g^2 = inf``; the first EM step is the exact
    frozen-denoiser solution ``alpha' x0 + sigma' z`` (``r = 0``), finite for any data."""
    gm = _mixture()
    den = gm.denoiser(RectifiedFlow())
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ts = torch.tensor([1.0, 0.7], dtype=torch.float64)
    out = sample(den, x, solver="euler-maruyama", ts=ts, seed=3).x
    z = SampleRNG.from_seed(3, batch=4).randn((2,), dtype=torch.float64)
    expected = 0.3 * den.x0(x, 1.0) + 0.7 * z
    assert torch.allclose(out, expected, atol=1e-12, rtol=0)
