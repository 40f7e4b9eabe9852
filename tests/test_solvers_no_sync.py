"""A solver step reads no tensor on the host.

After ``init`` a step of every fixed-grid solver (``ddim``, ``euler``, ``dpmpp-2m``,
``dpmpp-3m``, ``unipc``, ``evodiff``, ``heun``, and the stochastic ``ddpm``,
``dpmpp-2m-sde``, ``euler-maruyama``, ``pc``) must not convert a tensor to a Python number
(``item``, ``float``, ``bool``, ``int``, ``tolist``, ``numpy``) nor build a tensor from
Python numbers (``torch.tensor``, ``torch.as_tensor``): on an accelerator the first waits
for the device and the second copies to it. Here every such call raises during the steps.
``adaptive`` keeps its step-size control (times, step sizes, counts: float64 and integer
tensors) on the CPU by design and reads one per-row error norm per attempt; its steps must
read nothing of the sample's own dtype. The weights the steps use are computed on the host
in float64; they are checked against the tensor formulas they replace.
"""
import math

import pytest
import torch

from diffinfer import RectifiedFlow, VP, Denoiser, solvers, grids
from diffinfer.denoiser import PREDICTIONS, from_x0_eps
from diffinfer.rng import SampleRNG
from diffinfer.solvers.dpmpp import dpmpp_correction
from diffinfer.solvers.unipc import _phi_products, unipc_weights

F64 = torch.float64
DETERMINISTIC = [("ddim", {}), ("euler", {}), ("dpmpp-2m", {}), ("dpmpp-3m", {}),
                 ("dpmpp-3m", {"third_order": "diffusers"}), ("unipc", {}),
                 ("unipc", {"order": 3, "variant": "bh1"}), ("evodiff", {}), ("heun", {}),
                 ("heun", {"variable": "t"})]
STOCHASTIC = [("ddpm", {}), ("ddim", {"eta": 0.5}), ("dpmpp-2m-sde", {}), ("euler-maruyama", {}),
              ("euler-maruyama", {"diffusion": 0.5}), ("euler-maruyama", {"diffusion": lambda t: 0.2 + t}),
              ("pc", {}), ("pc", {"predictor": "ancestral"})]
CONVERSIONS = ("item", "__float__", "__bool__", "__int__", "__index__", "tolist", "numpy")
FACTORIES = ("tensor", "as_tensor")


def _forbid_host_reads(mp: pytest.MonkeyPatch, sample_dtype=None) -> None:
    """Make every tensor -> Python conversion and Python -> tensor factory raise (with
    ``sample_dtype``: only conversions of tensors of that dtype)."""
    def boom(*args, **kwargs):
        raise AssertionError("a solver step read a tensor on the host or built one from Python numbers")

    for name in CONVERSIONS:
        if sample_dtype is None:
            mp.setattr(torch.Tensor, name, boom)
        else:
            original = getattr(torch.Tensor, name)

            def guarded(self, *args, _original=original, **kwargs):
                if self.dtype == sample_dtype:
                    boom()
                return _original(self, *args, **kwargs)

            mp.setattr(torch.Tensor, name, guarded)
    for name in FACTORIES:
        mp.setattr(torch, name, boom)


def _denoiser(process, prediction):
    """A nonlinear float32 network of the given prediction type (its x0 is ``tanh(x)/2``)."""
    def net(x, t):  # t: [B] in x's dtype
        c = process.at(t.to(F64)).broadcast(x)
        x0 = 0.5 * torch.tanh(x)
        eps = (x - c.alpha * x0) / c.sigma
        return from_x0_eps(x0, eps, prediction, c)

    return Denoiser(net, process, prediction=prediction, check=False)


def _run(solver, den, x, ts, mp=None, sample_dtype=None):
    rng = SampleRNG.from_seed(5, batch=x.shape[0]) if solver.stochastic else None
    state = solver.init(den, x, ts, rng)
    if mp is not None:
        _forbid_host_reads(mp, sample_dtype)
    for i in range(ts.numel() - 1):
        x, state = solver.step(den, x, i, state)
    return x


# an eps or score network has no x0 where alpha = 0 (rectified flow's t = 1): VP only
PROCESS_PREDICTIONS = [("vp", p) for p in PREDICTIONS] + [("rf", p) for p in PREDICTIONS if p not in ("eps", "score")]


@pytest.mark.parametrize("process_name,prediction", PROCESS_PREDICTIONS)
@pytest.mark.parametrize("name,options", DETERMINISTIC + STOCHASTIC)
def test_steps_read_nothing_on_the_host(name, options, prediction, process_name, monkeypatch):
    process = VP("linear") if process_name == "vp" else RectifiedFlow()
    den = _denoiser(process, prediction)
    ts = grids.default(process, 8)
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))  # float32, CPU
    expected = _run(solvers.get(name, **options), den, x, ts)
    with monkeypatch.context() as mp:
        got = _run(solvers.get(name, **options), den, x, ts, mp)
    assert torch.isfinite(got).all()
    assert torch.equal(got, expected)  # the same code path ran


@pytest.mark.parametrize("process_name", ["vp", "rf"])
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adaptive_steps_read_nothing_of_the_sample(method, process_name, monkeypatch):
    """``adaptive``'s control lives on the CPU (float64 / integer tensors); nothing of the
    sample's dtype is read on the host."""
    process = VP("linear") if process_name == "vp" else RectifiedFlow()
    den = _denoiser(process, "x0")
    ts = grids.default(process, 4)
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))  # float32, CPU
    solver = solvers.get("adaptive", method=method, rtol=1e-3, atol=1e-3)
    expected = _run(solver, den, x, ts)
    with monkeypatch.context() as mp:
        got = _run(solver, den, x, ts, mp, sample_dtype=torch.float32)
    assert torch.equal(got, expected)


def test_the_check_catches_a_host_read(monkeypatch):
    """The guard is live: ``float`` of a tensor inside a step raises."""
    den = _denoiser(VP("linear"), "x0")
    ts = grids.default(den.process, 4)
    solver = solvers.get("euler")
    state = solver.init(den, torch.zeros(2, 3), ts)
    with monkeypatch.context() as mp:
        _forbid_host_reads(mp)
        with pytest.raises(AssertionError, match="host"):
            float(state.grid.ts[1])


def test_unipc_weights_solve_the_vandermonde_system():
    """The host solve equals ``torch.linalg.solve`` of ``R (B(h) rho) = g``, ``R[k][j] = r_j^k``."""
    h = 0.37
    for rks, corrector in (([-0.8], True), ([-0.8, -1.9], True), ([-0.8, -1.9], False)):
        ratios = rks + ([1.0] if corrector else [])
        n = len(ratios)
        R = torch.tensor([[r ** k for r in ratios] for k in range(n)], dtype=F64)
        expected = torch.linalg.solve(R, torch.tensor(_phi_products(h, n), dtype=F64))
        got = unipc_weights(h, rks, n + (0 if corrector else 1), "bh2", corrector)
        torch.testing.assert_close(torch.tensor(got, dtype=F64), expected, rtol=1e-12, atol=1e-14)
    # alpha = 0 at the start (h = inf): the order-1 corrector's exact limit B(h) rho = -1
    assert unipc_weights(math.inf, [], 1, "bh1", corrector=True) == [-1.0]


@pytest.mark.parametrize("third_order", ["taylor", "diffusers"])
def test_dpmpp_weights_expand_the_divided_differences(third_order):
    """``sum_j w_j m_j`` equals ``c1 D1 + c2 D2`` built from divided differences (3M) and
    ``-(e^{-h} - 1)/2 D1`` (2M) on random predictions."""
    g = torch.Generator().manual_seed(3)
    m2, m1, m0 = (torch.randn(5, dtype=F64, generator=g) for _ in range(3))
    lams = [-1.3, -0.6, 0.2]
    h = 0.9
    r0, r1 = (lams[2] - lams[1]) / h, (lams[1] - lams[0]) / h
    d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
    em1 = math.expm1(-h)
    two = dpmpp_correction(2, h, lams[1:])
    torch.testing.assert_close(two[0] * m1 + two[1] * m0, -0.5 * em1 * d1_0, rtol=1e-12, atol=1e-14)
    D1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    D2 = (d1_0 - d1_1) / (r0 + r1)
    c1 = em1 / h + 1.0
    c2 = -((em1 + h) / (h * h) - 0.5) * (2.0 if third_order == "taylor" else 1.0)
    three = dpmpp_correction(3, h, lams, third_order)
    torch.testing.assert_close(three[0] * m2 + three[1] * m1 + three[2] * m0, c1 * D1 + c2 * D2,
                               rtol=1e-12, atol=1e-14)
