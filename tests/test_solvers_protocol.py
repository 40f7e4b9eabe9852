"""The solver protocol: every registered solver on every process, explicit state that can
be selected mid-trajectory, per-sample seeding, NFE accounting and clear errors.

Bit-exactness tests use an elementwise model (``_ElementwiseModel``): each output entry
depends only on the same input entry, so a row's result cannot depend on the batch (a
batched matmul or Cholesky, as in the mixture oracle, need not be batch-invariant in the
last bit under BLAS).
"""
import math

import pytest
import torch

from diffinfer import (EDM, VE, VP, Denoiser, DiscreteVP, Interpolant, ModelOutputError, RectifiedFlow,
                       sample, solvers)
from diffinfer.solvers import select
from diffinfer.toys import GaussianMixture

PROCESSES = {
    "vp-linear": lambda: VP("linear"),
    "vp-cosine": lambda: VP("cosine"),
    "ve": VE,
    "edm": EDM,
    "rf": RectifiedFlow,
    "discrete-vp": DiscreteVP,
    "interpolant": lambda: Interpolant(lambda t: torch.cos(0.5 * math.pi * t), lambda t: torch.sin(0.5 * math.pi * t)),
}
ALL = solvers.names()
STEPS = 6


class _ElementwiseModel:
    """``x0_hat = tanh(2 a x / (a^2 + s^2)) / 2`` per entry (the exact denoiser of a
    standard normal squashed to be nonlinear); finite for every process and ``t``."""

    def __init__(self, process):
        self.process = process

    def __call__(self, x, t):
        a, s = self.process.alpha(t), self.process.sigma(t)  # [B]
        c = (a / (a * a + s * s)).to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
        return 0.5 * torch.tanh(2.0 * c * x)


def _elementwise_denoiser(process):
    return Denoiser(_ElementwiseModel(process), process, prediction="x0")


def _mixture4():
    """A 4-D mixture, sampled as [B, 1, 2, 2] tensors (any shape, not only vectors)."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 4, dtype=torch.float64, generator=g)
    return GaussianMixture(means, 0.1 * torch.eye(4, dtype=torch.float64).expand(3, 4, 4).clone())


@pytest.mark.parametrize("process_name", sorted(PROCESSES))
@pytest.mark.parametrize("name", ALL)
def test_every_solver_runs_on_every_process(name, process_name):
    process = PROCESSES[process_name]()
    den = _mixture4().denoiser(process)
    res = sample(den, shape=(5, 1, 2, 2), solver=name, steps=STEPS, seed=0, dtype=torch.float64)
    assert res.x.shape == (5, 1, 2, 2)
    assert torch.isfinite(res.x).all()
    assert res.nfe == den.nfe > 0
    if not solvers.get(name).stochastic or name == "ddpm":
        # moved from the noise to the data scale (Euler-Maruyama with 6 steps on a VE/EDM
        # grid overshoots, g^2 dt >> sigma^2, as that method does; it is only finite here)
        assert res.x.abs().max() < 10


@pytest.mark.parametrize("name", ALL)
def test_declared_attributes_and_nfe(name):
    solver = solvers.get(name)
    assert isinstance(solver.order, int) and solver.order >= 1
    assert isinstance(solver.stochastic, bool)
    assert (type(solver).__doc__ or "").strip(), "a docstring citing the algorithm"
    den = _elementwise_denoiser(VP("linear"))
    res = sample(den, shape=(3, 4), solver=name, steps=STEPS, seed=1)
    if name == "adaptive":
        assert res.nfe >= 1 and bool((res.state.accepted >= STEPS - 1).all())
    elif name == "heun":
        assert res.nfe == 2 * STEPS - 1  # the step to t = 0 is an Euler step
    else:
        assert res.nfe == solver.evals_per_step * STEPS


def test_registry_lists_every_family():
    expected = {"euler", "heun", "ddim", "ddpm", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde", "unipc",
                "euler-maruyama", "pc", "adaptive", "evodiff"}
    assert expected <= set(ALL)
    rows = solvers.describe()
    assert {r["name"] for r in rows} == set(ALL)


def _run(den, x, solver, ts, seed, start=0, stop=None, state=None):
    """Steps ``start..stop-1`` of ``solver`` from ``x`` (a fresh state unless given)."""
    from diffinfer.rng import make_rng

    if state is None:
        rng = make_rng(seed, x.shape[0], x.device) if seed is not None else None
        state = solver.init(den, x, ts, rng)
    stop = ts.numel() - 1 if stop is None else stop
    for i in range(start, stop):
        x, state = solver.step(den, x, i, state)
    return x, state


SOLVER_VARIANTS = [(n, {}) for n in ALL] + [
    ("unipc", {"order": 3, "variant": "bh1"}),
    ("dpmpp-3m", {"third_order": "diffusers"}),
    ("pc", {"predictor": "ancestral", "corrector_steps": 2}),
    ("euler-maruyama", {"diffusion": 0.3}),
    ("adaptive", {"method": "bosh3"}),
]


@pytest.mark.parametrize("process_name", ["vp-linear", "rf"])
@pytest.mark.parametrize("name,options", SOLVER_VARIANTS)
def test_select_mid_trajectory_equals_running_the_rows(name, options, process_name):
    """``select(state, idx)`` after k steps, then continuing, gives the same bits as running
    rows ``idx`` from the start with their own streams (repeats allowed)."""
    den = _elementwise_denoiser(PROCESSES[process_name]())
    solver = solvers.get(name, **options)
    ts = torch.cat([torch.linspace(1.0, 0.05, 8, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x_T = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    seed = 11
    k = 4
    x_k, state = _run(den, x_T, solver, ts, seed, stop=k)
    idx = torch.tensor([4, 1, 1, 5])
    sub_state = select(state, idx)
    out, _ = _run(den.select(idx), x_k[idx], solver, ts, None, start=k, state=sub_state)
    alone, _ = _run(den, x_T[idx], solver, ts, (seed, idx.tolist()))
    assert torch.equal(out, alone)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_bits_across_batch_sizes(name):
    """Row ``i`` of a seeded run is bitwise the same at batch sizes 1, 7 and 64 (its
    initial noise and step noise come from stream ``(seed, i)``)."""
    den = _elementwise_denoiser(RectifiedFlow() if name == "euler" else VP("linear"))
    runs = {b: sample(den, shape=(b, 2, 3), solver=name, steps=STEPS, seed=5).x for b in (1, 7, 64)}
    assert torch.equal(runs[1][0], runs[7][0])
    assert torch.equal(runs[1][0], runs[64][0])
    assert torch.equal(runs[7], runs[64][:7])
    other = sample(den, shape=(7, 2, 3), solver=name, steps=STEPS, seed=6).x
    assert not torch.equal(other, runs[7])


def test_stochastic_streams_depend_on_the_seed_only():
    den = _elementwise_denoiser(VP("linear"))
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    a = sample(den, x_T, solver="dpmpp-2m-sde", steps=STEPS, seed=3).x
    b = sample(den, x_T, solver="dpmpp-2m-sde", steps=STEPS, seed=3).x
    c = sample(den, x_T, solver="dpmpp-2m-sde", steps=STEPS, seed=4).x
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- bad input ------------------------------------------------------------------------

def test_unknown_solver_lists_valid_names():
    with pytest.raises(ValueError) as e:
        solvers.get("dpm-solver-9000")
    for n in ("dpmpp-2m", "unipc", "evodiff", "adaptive", "pc", "euler-maruyama"):
        assert n in str(e.value)


@pytest.mark.parametrize("name,options,valid", [
    ("unipc", {"variant": "bh3"}, "bh1"),
    ("unipc", {"order": 5}, "1, 2 or 3"),
    ("dpmpp-3m", {"third_order": "quartic"}, "taylor"),
    ("adaptive", {"method": "rk45"}, "dopri5"),
    ("pc", {"predictor": "heun"}, "euler-maruyama"),
    ("pc", {"snr": -1.0}, "snr"),
    ("euler-maruyama", {"diffusion": -2.0}, "diffusion"),
    ("adaptive", {"rtol": 0.0, "atol": 0.0}, "rtol"),
    ("evodiff", {"order": 3}, "bad options"),
])
def test_bad_options_raise_clear_errors(name, options, valid):
    with pytest.raises(ValueError, match=valid):
        solvers.get(name, **options)


@pytest.mark.parametrize("ts", [
    [0.0, 0.5, 1.0],          # ascending
    [1.0, 0.5, 0.5, 0.0],     # not strictly descending
    [1.0, float("nan"), 0.0],
    [1.5, 0.5, 0.0],          # outside [0, 1]
    [1.0],                    # one point
])
@pytest.mark.parametrize("name", ["dpmpp-2m", "unipc", "adaptive"])
def test_bad_grid_raises(name, ts):
    den = _elementwise_denoiser(VP("linear"))
    with pytest.raises(ValueError, match="grid"):
        sample(den, shape=(2, 3), solver=name, ts=torch.tensor(ts, dtype=torch.float64), seed=0)


@pytest.mark.parametrize("name", ALL)
def test_nan_from_the_network_raises(name):
    process = VP("linear")
    calls = {"n": 0}

    def net(x, t):
        calls["n"] += 1
        y = _ElementwiseModel(process)(x, t)
        return y if calls["n"] < 3 else y * float("nan")

    den = Denoiser(net, process, prediction="x0")
    with pytest.raises(ModelOutputError, match="NaN"):
        sample(den, shape=(2, 3), solver=name, steps=STEPS, seed=0)


@pytest.mark.parametrize("name", ["dpmpp-3m", "unipc", "evodiff", "euler-maruyama", "adaptive", "pc"])
def test_wrong_shape_output_raises(name):
    den = Denoiser(lambda x, t: x[:, :2], VP("linear"), prediction="eps")
    with pytest.raises(ModelOutputError, match="shape"):
        sample(den, shape=(2, 3), solver=name, steps=STEPS, seed=0)


@pytest.mark.parametrize("name", ["euler-maruyama", "pc", "dpmpp-2m-sde", "ddpm"])
def test_stochastic_solver_without_streams_raises(name):
    den = _elementwise_denoiser(VP("linear"))
    with pytest.raises(ValueError, match="stochastic"):
        solvers.get(name).init(den, torch.zeros(2, 3), torch.tensor([1.0, 0.5, 0.0]), None)


def test_nan_start_raises():
    den = _elementwise_denoiser(VP("linear"))
    with pytest.raises(ValueError, match="NaN"):
        sample(den, torch.full((2, 3), float("nan")), solver="unipc", steps=STEPS)
