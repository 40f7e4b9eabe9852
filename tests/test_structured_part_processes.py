"""One process per part of a graph state (issue 19, item 2; GDSS's system of SDEs):
``diffinfer.part_processes`` against exact answers, float64.

Oracle: ``toys.graph_gaussian.GraphGaussian`` (a jointly Gaussian (X [4, 2], A [4, 4]) law,
nodes and edges correlated), moved to the layout's packed coordinates, ``x0 ~ N(m, C)``.
With a noise level per coordinate (``alpha_i``, ``sigma_i``) everything is closed form:
``E[x0 | x] = m + C a (a C a + s^2)^-1 (x - a m)`` (``a``, ``s`` diagonal), and the marginal
is ``N(a m, a C a + s^2)``. The "trained" joint network is that formula with each part at
its own process's coefficients at a shared time (as GDSS trains); the adapter's output is
compared with the same formula at the solver process's coefficients at the field's
per-entry Q-times, so the path conversion is checked, not reused.

Checked: (a) the adapter's prediction is the exact per-part-noise denoiser (eps and x0
networks); (b) the field solve is affine in its start (the denoiser is linear), so the
exact law of its endpoint from the exact start marginal follows from D + 1 solves: it
converges to the exact endpoint law at the solver's order, ends far below the floor of
two exact sample sets, and the per-sample endpoint converges; ignoring the per-part
processes misses the law by many floors; sampling from seeded noise draws the exact law
within the floor of two exact sample sets; (c) with both parts on the same process it is
bitwise the single-process ``joint_denoiser`` path (to 1e-12 with equal but distinct
process objects); (d) clear errors.
"""
import numpy as np
import pytest
import torch

import diffinfer as di
from diffinfer import VE, VP, RectifiedFlow, grids
from diffinfer.part_processes import PartProcessNet, part_process_denoiser, part_time_field, sample_parts
from diffinfer.structured_state import Dense, Layout, Symmetric, joint_denoiser
from diffinfer.toys.graph_gaussian import GraphGaussian

N, F = 4, 2
F64 = torch.float64
T_MIN = 1e-3
SLOPE_TOL = 0.25


def _layout() -> Layout:
    return Layout(nodes=Dense(N, F), adj=Symmetric(N))


def _law(seed: int, layout: Layout):
    """``(m, C)`` of the oracle in packed coordinates (row k of ``P``: packing of basis graph k)."""
    gg = GraphGaussian.random(N, F, seed=seed)
    P = layout.pack(gg.to_matrix(torch.eye(gg.dim, dtype=F64)))  # [D, D]
    return gg, gg.mean @ P, P.T @ gg.cov @ P


def _posterior_mean(x, m, C, a, s):
    """``m + C a (a C a + s^2)^-1 (x - a m)``; ``x`` [B, D], ``a``, ``s`` [D]."""
    K = a[:, None] * C * a[None, :] + torch.diag(s * s)
    return m + torch.linalg.solve(K, (x - a * m).T).T @ (a[:, None] * C)


def _coeffs(layout, processes, t):
    """Per-coordinate ``alpha``, ``sigma`` [D] with part p at its own process at time ``t``."""
    a = torch.cat([processes[n].alpha(torch.tensor(float(t), dtype=F64)).expand(layout.parts[n].size)
                   for n in layout.names])
    s = torch.cat([processes[n].sigma(torch.tensor(float(t), dtype=F64)).expand(layout.parts[n].size)
                   for n in layout.names])
    return a, s


def _trained_net(layout, processes, m, C, prediction):
    """The exact GDSS-style joint network: each part noised by its own process at shared t."""
    def net(X, A, t):
        y = layout.pack(nodes=X, adj=A).to(F64)
        out = torch.empty_like(y)
        for tv in torch.unique(t):
            rows = (t == tv).nonzero().squeeze(1)
            a, s = _coeffs(layout, processes, float(tv))
            x0 = _posterior_mean(y[rows], m, C, a, s)
            out[rows] = x0 if prediction == "x0" else (y[rows] - a * x0) / s
        return layout.unpack(out)
    return net


def _configs():
    """(processes, solver process) per case: VP nodes with VE / flatter-VP / flow adjacency."""
    vp = VP("linear")
    rf = RectifiedFlow()
    return {
        "vp-ve": ({"nodes": vp, "adj": VE(0.01, 50.0)}, None),
        "vp-vp5": ({"nodes": vp, "adj": VP("linear", beta_max=5.0)}, None),
        "vp-rf(Q=rf)": ({"nodes": vp, "adj": rf}, rf),
    }


CONFIGS = _configs()


# --- (a) the adapter is the exact per-part-noise denoiser ----------------------------------

@pytest.mark.parametrize("prediction", ["eps", "x0"])
@pytest.mark.parametrize("case", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_adapter_is_the_exact_denoiser_at_per_part_noise_levels(seed, case, prediction):
    processes, Q = CONFIGS[case]
    layout = _layout()
    _, m, C = _law(seed, layout)
    den = part_process_denoiser(_trained_net(layout, processes, m, C, prediction), layout, processes, Q, prediction)
    Qp = den.process
    x = torch.randn(5, layout.size, dtype=F64, generator=torch.Generator().manual_seed(50 + seed)) * 2.0
    for t in (0.03, 0.3, 0.8):
        row = part_time_field(layout, processes, Q, [t, 0.0])[0]  # [D] Q-times
        a, s = Qp.alpha(row), Qp.sigma(row)
        want = _posterior_mean(x, m, C, a, s)
        got = den.x0(x, row[None])
        assert float((got - want).abs().max()) <= 1e-10 * float(want.abs().max()), (case, t)
        # the parts really are at different Q-times (else this would test nothing)
        assert float(row.max() - row.min()) > 1e-3


# --- (b) the field solve reaches the exact endpoint law ------------------------------------

def _endpoint_law(den, layout, Q, field, ts, m, C, solver):
    """The exact law of the solve's endpoint when it starts from the exact marginal at
    ``field[0]``: the solve is affine in ``x_T`` (linear denoiser), so ``D + 1`` solves give it."""
    a0, s0 = Q.alpha(field[0]), Q.sigma(field[0])
    mT, CT = a0 * m, a0[:, None] * C * a0[None, :] + torch.diag(s0 * s0)
    x_T = torch.cat([mT[None], mT[None] + torch.eye(layout.size, dtype=F64)])
    res = sample_parts(den, ts, x_T=x_T, solver=solver, lower_order_final=False)
    assert res.nfe == len(ts) - 1  # one joint model call per step
    Mx = res.x[1:] - res.x[0]  # [D, D]: row i = image of e_i
    return res.x[0], Mx.T @ CT @ Mx, Mx


def _frechet(mu1, C1, mu2, C2) -> float:
    def sqrtm(a):
        w, v = torch.linalg.eigh(0.5 * (a + a.T))
        return (v * w.clamp(min=0).sqrt()) @ v.T
    r = sqrtm(C2)
    return float((mu1 - mu2).square().sum() + torch.trace(C1 + C2 - 2 * sqrtm(r @ C1 @ r)))


M_FLOOR = 2000


@pytest.mark.parametrize("solver", ["dpmpp-2m", "unipc"])
@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_field_solve_converges_to_the_exact_endpoint_law(case, solver):
    processes, Q = CONFIGS[case]
    layout = _layout()
    gg, m, C = _law(3, layout)
    # an eps network cannot give x0 where the flow's alpha is 0 (t = 1): the flow case predicts x0
    pred = "x0" if Q is not None else "eps"
    den = part_process_denoiser(_trained_net(layout, processes, m, C, pred), layout, processes, Q, pred)
    Qp = den.process
    steps, errors, ends = [40, 80, 160], [], []
    x_probe = torch.randn(3, layout.size, dtype=F64, generator=torch.Generator().manual_seed(9))
    for n in steps:
        ts = grids.logsnr(processes["nodes"], n, t_max=1.0, t_min=T_MIN, final_zero=False)
        field = part_time_field(layout, processes, Q, ts)
        mean, cov, Mx = _endpoint_law(den, layout, Qp, field, ts, m, C, solver)
        aN, sN = Qp.alpha(field[-1]), Qp.sigma(field[-1])  # the exact law at the end times
        want_mean, want_cov = aN * m, aN[:, None] * C * aN[None, :] + torch.diag(sN * sN)
        errors.append(max(float((mean - want_mean).abs().max()), float((cov - want_cov).abs().max())))
        ends.append(mean + x_probe @ Mx)  # endpoints of three fixed starts
    slope = -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])
    assert slope >= 2 - SLOPE_TOL, (case, solver, slope, errors)
    # far below the floor of two exact sample sets: the worst/best of 4 exact sets of M_FLOOR
    floors = [_frechet(z.mean(0), torch.cov(z.T), want_mean, want_cov)
              for z in (want_mean + torch.randn(M_FLOOR, layout.size, dtype=F64,
                                                generator=torch.Generator().manual_seed(s))
                        @ torch.linalg.cholesky(want_cov).T for s in range(4))]
    assert _frechet(mean, cov, want_mean, want_cov) < 0.01 * min(floors), (errors, floors)
    # the per-sample endpoint converges (Cauchy differences shrink at the order)
    d1, d2 = float((ends[1] - ends[0]).abs().max()), float((ends[2] - ends[1]).abs().max())
    assert d2 < d1 / 2 ** (2 - SLOPE_TOL), (d1, d2)


def test_ignoring_the_part_processes_misses_the_law():
    """Negative control: the same network read as if both parts followed the solver process
    (the single-process ``joint_denoiser``) is many floors off the exact law."""
    processes, Q = CONFIGS["vp-ve"]
    layout = _layout()
    _, m, C = _law(3, layout)
    vp = processes["nodes"]
    net = _trained_net(layout, processes, m, C, "eps")
    ts = grids.logsnr(vp, 80, t_max=1.0, t_min=T_MIN, final_zero=False)
    a0, s0 = vp.alpha(ts[0]), vp.sigma(ts[0])
    x_T = torch.cat([a0 * m[None], a0 * m[None] + torch.eye(layout.size, dtype=F64)])
    out = di.sample(joint_denoiser(net, layout, vp, "eps"), x_T, ts=ts).x
    Mx = out[1:] - out[0]
    CT = a0 * a0 * C + s0 * s0 * torch.eye(layout.size, dtype=F64)
    aN, sN = vp.alpha(ts[-1]), vp.sigma(ts[-1])
    wrong = _frechet(out[0], Mx.T @ CT @ Mx, aN * m, aN * aN * C + sN * sN * torch.eye(layout.size, dtype=F64))
    z = m + torch.randn(M_FLOOR, layout.size, dtype=F64, generator=torch.Generator().manual_seed(0)) \
        @ torch.linalg.cholesky(C).T
    assert wrong > 10 * _frechet(z.mean(0), torch.cov(z.T), m, C)


# --- (c) one process for every part: the single-process path ---------------------------------

@pytest.mark.parametrize("solver", ["dpmpp-2m", "unipc", "ddim"])
def test_same_process_for_every_part_is_the_joint_denoiser_path(solver):
    layout = _layout()
    _, m, C = _law(1, layout)
    vp = VP("linear")
    same = {"nodes": vp, "adj": vp}
    ts = grids.logsnr(vp, 15, t_max=1.0, t_min=T_MIN, final_zero=False)
    x_T = torch.randn(6, layout.size, dtype=F64, generator=torch.Generator().manual_seed(4))
    net = _trained_net(layout, same, m, C, "eps")
    want = di.sample(joint_denoiser(net, layout, vp, "eps"), x_T, solver=solver, ts=ts).x
    got = sample_parts(part_process_denoiser(net, layout, same), ts, x_T=x_T, solver=solver).x
    assert torch.equal(got, want)
    # equal processes that are distinct objects: the log-SNR round trip, to round-off
    twin = {"nodes": vp, "adj": VP("linear")}
    got2 = sample_parts(part_process_denoiser(_trained_net(layout, twin, m, C, "eps"), layout, twin), ts,
                        x_T=x_T, solver=solver).x
    assert float((got2 - want).abs().max()) <= 1e-12 * float(want.abs().max())
    # seeded from noise: the same draws as the single-process sampler
    a = sample_parts(part_process_denoiser(net, layout, same), ts, batch=3, seed=7, dtype=F64, solver=solver).x
    b = di.sample(joint_denoiser(net, layout, vp, "eps"), shape=(3, layout.size), ts=ts, seed=7, dtype=F64,
                  solver=solver).x
    assert torch.equal(a, b)


# --- (d) errors ------------------------------------------------------------------------------

def test_clear_errors():
    layout = _layout()
    vp, ve = VP("linear"), VE()
    net = lambda X, A, t: (X, A)  # noqa: E731
    with pytest.raises(ValueError, match=r"\['adj'\] have no process.*nodes, adj"):
        part_process_denoiser(net, layout, {"nodes": vp})
    with pytest.raises(ValueError, match=r"\['edges'\] unknown.*nodes, adj"):
        part_process_denoiser(net, layout, {"nodes": vp, "adj": ve, "edges": vp})
    with pytest.raises(TypeError, match="part 'adj' must be a diffinfer Process"):
        part_process_denoiser(net, layout, {"nodes": vp, "adj": "ve"})
    with pytest.raises(ValueError, match="prediction 'v' depends on the process.*eps, x0"):
        part_process_denoiser(net, layout, {"nodes": vp, "adj": ve}, prediction="v")
    # a VP solver process cannot reach a flow's log-SNR at t = 1 (alpha = 0)
    with pytest.raises(ValueError, match="part 'adj'.*does not reach.*RectifiedFlow"):
        part_time_field(layout, {"nodes": vp, "adj": RectifiedFlow()}, None, [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="strictly descending"):
        part_time_field(layout, {"nodes": vp, "adj": ve}, None, [0.5, 0.5, 0.0])
    # a field that is not a part-process field (entries of one part at different times)
    adapter = PartProcessNet(net, layout, {"nodes": vp, "adj": ve})
    t = torch.full((2, layout.size), 0.5, dtype=F64)
    t[0, 0] = 0.4
    with pytest.raises(ValueError, match="entries of part 'nodes' are at different times"):
        adapter(torch.zeros(2, layout.size, dtype=F64), t)
    with pytest.raises(TypeError, match="part_process_denoiser"):
        sample_parts(joint_denoiser(net, layout, vp), [1.0, 0.0], batch=2)


@pytest.mark.parametrize("case", ["vp-ve", "vp-rf(Q=rf)"])
def test_sampling_from_noise_draws_the_exact_law(case):
    """``sample_parts`` from its own seeded noise (``sigma_Q * z`` at the first row of the
    field): the Frechet distance of the samples' Gaussian fit to the exact endpoint law is
    within ``2x`` the worst of 4 exact sets of the same size (the floor). (Not vp-vp5: its
    adjacency keeps alpha = 0.28 at t = 1, so pure noise is not its marginal there.)"""
    processes, Q = CONFIGS[case]
    layout = _layout()
    _, m, C = _law(2, layout)
    pred = "x0" if Q is not None else "eps"
    den = part_process_denoiser(_trained_net(layout, processes, m, C, pred), layout, processes, Q, pred)
    ts = grids.logsnr(processes["nodes"], 40, t_max=1.0, t_min=T_MIN, final_zero=False)
    field = part_time_field(layout, processes, Q, ts)
    res = sample_parts(den, ts, batch=M_FLOOR, seed=11, dtype=F64, solver="unipc")
    aN, sN = den.process.alpha(field[-1]), den.process.sigma(field[-1])
    want_mean, want_cov = aN * m, aN[:, None] * C * aN[None, :] + torch.diag(sN * sN)
    L = torch.linalg.cholesky(want_cov)
    floor = max(_frechet(z.mean(0), torch.cov(z.T), want_mean, want_cov)
                for z in (want_mean + torch.randn(M_FLOOR, layout.size, dtype=F64,
                                                  generator=torch.Generator().manual_seed(s)) @ L.T
                          for s in range(4)))
    got = _frechet(res.x.mean(0), torch.cov(res.x.T), want_mean, want_cov)
    assert got < 2.0 * floor, (case, got, floor)
    _, A = layout.unpack(res.x)
    assert torch.equal(A, A.transpose(1, 2))
