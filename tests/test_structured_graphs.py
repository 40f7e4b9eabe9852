"""Graph states (issue 19, item 2; GDSS, Jo et al. 2022): node features and a symmetric
adjacency packed into one flat state (``diffinfer.structured_state``), against exact answers.

Oracle: ``toys.graph_gaussian.GraphGaussian``, a jointly Gaussian (X [5, 2], A [5, 5]) law
(seeded random covariance coupling nodes and edges) with GDSS's symmetric noise, written
in matrix units with its own column-major coordinates (no code shared with the packing).
Its denoiser (a pseudo-inverse in matrix space), probability-flow endpoint (closed form in
the eigenbasis) and linearly tilted law are exact, float64.

Checked: packing round trips and is symmetric by construction (the packed state's noise
unpacks to ``triu(Z, 1) + triu(Z, 1)^T``); the joint denoiser on the packed state is the
exact packed-space Gaussian denoiser for every prediction type (also with a per-part noise
scale); every deterministic solver converges to the exact joint ODE endpoint at its order;
the stochastic solvers sample the exact law (within the floor of two exact sample sets);
``select`` on a packed batch; the same seed gives the same graph alone or in a batch;
reward guidance on the unpacked parts is the exact tilted model.
"""
import math

import numpy as np
import pytest
import torch

import diffinfer as di
from diffinfer import VP, RectifiedFlow, grids, solvers
from diffinfer.denoiser import ModelOutputError
from diffinfer.guidance import RewardGuidance
from diffinfer.loop import iterate, rollout
from diffinfer.rng import make_rng
from diffinfer.structured_state import Dense, JointNet, Layout, Symmetric, joint_denoiser
from diffinfer.toys import GaussianMixture
from diffinfer.toys.graph_gaussian import GraphGaussian

N, F = 5, 2
SEEDS = [0, 1, 2]
T_MIN = 1e-2
SLOPE_TOL = 0.25
F64 = torch.float64


def _layout(adj_scale: float = 1.0) -> Layout:
    return Layout(nodes=Dense(N, F), adj=Symmetric(N, scale=adj_scale))


def _packed_gaussian(gg: GraphGaussian, layout: Layout) -> GaussianMixture:
    """The oracle's law in the layout's packed coordinates: ``P`` maps the oracle's free
    coordinates to packed ones (row k: the packing of the oracle's k-th basis graph)."""
    P = layout.pack(gg.to_matrix(torch.eye(gg.dim, dtype=F64)))  # [D, D]
    return GaussianMixture((gg.mean @ P)[None], (P.T @ gg.cov @ P)[None])


def _graphs(seed: int, batch: int = 4):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, N, F, generator=g, dtype=F64)
    U = torch.randn(batch, N, N, generator=g, dtype=F64).triu(1)
    return X, U + U.transpose(1, 2)


# --- the layout --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_pack_unpack_round_trips_bitwise(seed):
    layout = _layout()
    X, A = _graphs(seed)
    x = layout.pack(nodes=X, adj=A)
    assert x.shape == (4, N * F + N * (N - 1) // 2) == (4, layout.size)
    X2, A2 = layout.unpack(x)
    assert torch.equal(X2, X) and torch.equal(A2, A)
    assert torch.equal(layout.pack((X, A)), x) and torch.equal(layout.pack({"adj": A, "nodes": X}), x)
    # with the diagonal kept
    d = Layout(adj=Symmetric(N, diagonal=True))
    B = A + torch.diag_embed(torch.randn(4, N, dtype=F64, generator=torch.Generator().manual_seed(seed)))
    assert d.size == N * (N + 1) // 2 and torch.equal(d.unpack(d.pack(adj=B))[0], B)
    # a scaled part round trips up to one rounding
    s = _layout(adj_scale=3.0)
    assert torch.allclose(s.unpack(s.pack(nodes=X, adj=A))[1], A, rtol=1e-15, atol=0)


def test_the_packed_states_noise_is_gdss_symmetric_noise():
    """Any packed vector (here: the library's own per-row noise draw) unpacks to a symmetric,
    zero-diagonal adjacency, bitwise, equal to ``triu(Z, 1) + triu(Z, 1)^T`` of the matrix Z
    holding the draw row-major in its upper triangle (built by explicit loops)."""
    layout = _layout()
    z = make_rng(3, 6, "cpu").randn((layout.size,), dtype=F64)  # [6, D]
    _, A = layout.unpack(z)
    assert torch.equal(A, A.transpose(1, 2)) and not bool(torch.diagonal(A, dim1=1, dim2=2).any())
    Z = torch.zeros(6, N, N, dtype=F64)
    k = N * F
    for i in range(N):
        for j in range(i + 1, N):
            Z[:, i, j] = z[:, k]
            k += 1
    up = torch.triu(Z, 1)
    assert torch.equal(A, up + up.transpose(1, 2))


# --- the exact denoiser ------------------------------------------------------------------

@pytest.mark.parametrize("process", [VP("linear"), RectifiedFlow()], ids=["vp", "rf"])
@pytest.mark.parametrize("adj_scale", [1.0, 0.5])
@pytest.mark.parametrize("seed", SEEDS)
def test_joint_denoiser_is_the_exact_packed_gaussian_denoiser(seed, adj_scale, process):
    """The oracle's joint network in matrix units (symmetric noise on A, a pseudo-inverse in
    matrix space) through ``joint_denoiser`` equals the closed-form Gaussian denoiser of the
    packed coordinates (i.i.d. noise on them), for every prediction type. ``adj_scale``: the
    packed state holds ``A / scale``, so A's noise in its own units is ``sigma * scale``."""
    layout = _layout(adj_scale)
    gg = GraphGaussian.random(N, F, seed=seed, noise_scale=(1.0, adj_scale))
    gm = _packed_gaussian(gg, layout)
    x = torch.randn(6, layout.size, dtype=F64, generator=torch.Generator().manual_seed(100 + seed))
    for prediction in di.PREDICTIONS:
        den = joint_denoiser(gg.net(process, prediction), layout, process, prediction)
        for t in (0.05, 0.4, 0.9):
            got, want = den.x0(x, t), gm.posterior_mean(x, process, t)
            assert float((got - want).abs().max()) <= 1e-10 * float(want.abs().max()), (prediction, t)


def _deterministic():
    return [n for n in solvers.names() if not solvers.get(n).stochastic]


# steps and the slope each solver must reach (the declared order; dpmpp-3m's first-order
# warm-up caps it at 2 from noise, tests/test_solvers_convergence.py; EVODiff's
# variance-optimal weight is pre-asymptotic below 40 steps)
CONVERGENCE = {"evodiff": [40, 80, 160], "dpmpp-3m": [20, 40, 80]}
OPTIONS = {"dpmpp-2m": {"lower_order_final": False}, "dpmpp-3m": {"lower_order_final": False},
           "unipc": {"lower_order_final": False}}


def _exact_problem(seed=0, adj_scale=1.0):
    process = VP("linear")
    layout = _layout(adj_scale)
    gg = GraphGaussian.random(N, F, seed=seed, noise_scale=(1.0, adj_scale))
    den = joint_denoiser(gg.net(process, "eps"), layout, process, "eps")
    x = make_rng(seed, 8, "cpu").randn((layout.size,), dtype=F64) * float(process.sigma(1.0))
    return process, layout, gg, den, x


def _error(layout, out, X_ref, A_ref) -> float:
    X, A = layout.unpack(out)
    return max(float((X - X_ref).abs().max()), float((A - A_ref).abs().max()))


@pytest.mark.parametrize("name", _deterministic())
def test_each_solver_on_the_packed_state_solves_the_exact_joint_ode(name):
    process, layout, gg, den, x = _exact_problem()
    X_ref, A_ref = gg.ode_endpoint(*layout.unpack(x), process, 1.0, T_MIN)
    if name == "adaptive":  # error-controlled: the error follows the tolerance, not a slope
        ts = grids.logsnr(process, 10, t_max=1.0, t_min=T_MIN, final_zero=False)
        loose, tight = (_error(layout, di.sample(den, x, solver=name, ts=ts, rtol=tol, atol=tol).x, X_ref, A_ref)
                        for tol in (1e-5, 1e-8))
        assert loose < 1e-4 and tight < 1e-7 and tight < loose / 100, (loose, tight)
        return
    order = min(solvers.get(name).order, 2 if name == "dpmpp-3m" else 9)
    steps = CONVERGENCE.get(name, [20, 40, 80])
    errors = []
    for n in steps:
        ts = grids.logsnr(process, n, t_max=1.0, t_min=T_MIN, final_zero=False)
        out = di.sample(den, x, solver=name, ts=ts, **OPTIONS.get(name, {})).x
        _, A = layout.unpack(out)
        assert torch.equal(A, A.transpose(1, 2))
        errors.append(_error(layout, out, X_ref, A_ref))
    slope = -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])
    assert slope >= order - SLOPE_TOL, (name, slope, errors)
    assert errors[-1] < (0.2 if order == 1 else 0.01), (name, errors)


def test_the_closed_form_endpoint_matches_an_independent_ode_integration():
    """The oracle's closed-form flow agrees with SciPy's DOP853 on the packed joint denoiser."""
    from diffinfer.toys.reference import pf_ode_solution
    process, layout, gg, den, x = _exact_problem(seed=1, adj_scale=0.5)
    X_ref, A_ref = gg.ode_endpoint(*layout.unpack(x[:2]), process, 1.0, 0.2)
    ref = pf_ode_solution(den, x[:2], 1.0, 0.2, rtol=1e-9, atol=1e-9)
    assert _error(layout, ref, X_ref, A_ref) < 1e-7


# --- stochastic solvers ------------------------------------------------------------------

def _frechet_to_law(z: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """Frechet distance between the Gaussian fit of ``z`` [M, D] and N(mean, cov)."""
    def sqrtm(a):
        w, v = torch.linalg.eigh(a)
        return (v * w.clamp(min=0).sqrt()) @ v.T
    mu, C = z.mean(0), torch.cov(z.T)
    root = sqrtm(cov)
    cross = sqrtm(root @ C @ root)
    return float((mu - mean).square().sum() + torch.trace(C + cov - 2 * cross))


STOCHASTIC_STEPS = {"euler-maruyama": 100, "pc": 50, "ddpm": 100, "dpmpp-2m-sde": 50}  # ddpm: 0.22 at 50 steps (its bias)
M = 1500


@pytest.mark.parametrize("name", sorted(STOCHASTIC_STEPS))
def test_stochastic_solvers_sample_the_exact_joint_law(name):
    """Samples of the packed state, mapped to the oracle's coordinates, are as close to the
    exact law (Frechet distance of their Gaussian fit) as ``M`` exact samples are: within
    ``2x`` the worst of 4 exact sets (the floor), and every sampled adjacency is symmetric."""
    process, layout, gg, den, _ = _exact_problem(seed=2)
    res = di.sample(den, shape=(M, layout.size), dtype=F64, solver=name, steps=STOCHASTIC_STEPS[name], seed=5)
    X, A = layout.unpack(res.x)
    assert torch.equal(A, A.transpose(1, 2))
    got = _frechet_to_law(gg.to_free(X, A), gg.mean, gg.cov)
    floor = max(_frechet_to_law(gg.to_free(*gg.sample(M, seed=s)), gg.mean, gg.cov) for s in range(4))
    assert got < 2.0 * floor, (name, got, floor)


# --- select, seeds, guidance -------------------------------------------------------------

@pytest.mark.parametrize("name", ["dpmpp-2m", "dpmpp-2m-sde", "unipc"])
def test_select_on_a_packed_batch_continues_the_selected_rows(name):
    """Resampling a packed batch mid-solve (``solvers.select``: rows, their history and their
    noise streams, repeats allowed) continues each chosen row exactly as it would have gone."""
    process, layout, gg, den, _ = _exact_problem(seed=0)
    ts = grids.logsnr(process, 12, t_max=1.0, t_min=T_MIN, final_zero=False)
    solver = solvers.get(name)
    x = make_rng(9, 5, "cpu").randn((layout.size,), dtype=F64) * float(process.sigma(1.0))
    full = rollout(den, solver, x, ts, rng=make_rng(4, 5, "cpu"))[0]
    idx = torch.tensor([3, 0, 0, 4])
    out = None
    for step in iterate(den, solver, x, ts, make_rng(4, 5, "cpu")):
        if step.i == 5:
            step.x, step.state = step.x[idx], solvers.select(step.state, idx)
        out = step.x
    assert out.shape == (4, layout.size)
    assert float((out - full[idx]).abs().max()) < 1e-12
    _, A = layout.unpack(out)
    assert torch.equal(A, A.transpose(1, 2))


@pytest.mark.parametrize("name", ["ddpm", "euler-maruyama", "dpmpp-2m"])
def test_a_seed_gives_the_same_graph_alone_or_in_a_batch(name):
    """The library's promise: each row's noise is bitwise the same alone or in a batch, and
    the sample is bitwise the same when the network computes rows independently (an
    element-wise joint network); with the exact oracle (matrix products over the batch)
    rows agree to round-off."""
    layout = _layout()
    elementwise = joint_denoiser(lambda X, A, t: (torch.tanh(0.8 * X), torch.tanh(0.5 * A)), layout, VP(), "x0")
    _, _, _, oracle, _ = _exact_problem(seed=1)
    for den, exact in ((elementwise, True), (oracle, False)):
        batch = di.sample(den, shape=(6, layout.size), dtype=F64, solver=name, steps=8, seed=7).x
        alone = torch.cat([di.sample(den, shape=(1, layout.size), dtype=F64, solver=name, steps=8,
                                     seed=(7, [k])).x for k in range(6)])
        if exact:
            assert torch.equal(batch, alone)
        else:
            assert float((batch - alone).abs().max()) < 1e-12


def test_reward_guidance_on_the_unpacked_parts_is_the_exact_tilted_model():
    """A linear reward ``<WX, X0> + <WA, A0>`` read on the unpacked prediction: universal
    guidance (scale 1, raw gradient) through the joint denoiser is exactly the denoiser of the
    law tilted by ``exp(reward)``; both edges of a pair receive the reward's weight."""
    process, layout, gg, den, x = _exact_problem(seed=0)
    g = torch.Generator().manual_seed(11)
    WX = 0.3 * torch.randn(N, F, generator=g, dtype=F64)
    WA = 0.3 * torch.randn(N, N, generator=g, dtype=F64)  # not symmetric: A_ij and A_ji both count

    def reward(x0):
        X0, A0 = layout.unpack(x0)
        return (X0 * WX).sum((1, 2)) + (A0 * WA).sum((1, 2))

    guided = RewardGuidance(den, reward, scale=1.0, normalized=False)
    tilted = gg.tilted(WX, WA)
    gm = _packed_gaussian(tilted, layout)
    xt = torch.randn(6, layout.size, dtype=F64, generator=g)
    for t in (0.1, 0.5, 0.9):
        got, want = guided.x0(xt, t), gm.posterior_mean(xt, process, t)
        assert float((got - want).abs().max()) <= 1e-10 * float(want.abs().max()), t
    # and a guided solve reaches the tilted law's exact ODE endpoint
    X_ref, A_ref = tilted.ode_endpoint(*layout.unpack(x), process, 1.0, T_MIN)
    ts = grids.logsnr(process, 40, t_max=1.0, t_min=T_MIN, final_zero=False)
    out = di.sample(guided, x, solver="dpmpp-2m", ts=ts, lower_order_final=False).x
    plain = di.sample(den, x, solver="dpmpp-2m", ts=ts, lower_order_final=False).x
    assert _error(layout, out, X_ref, A_ref) < 0.02 < _error(layout, plain, X_ref, A_ref)


# --- errors ------------------------------------------------------------------------------

def test_bad_input_is_refused_with_a_clear_message():
    layout = _layout()
    X, A = _graphs(0)
    with pytest.raises(ValueError, match="symmetric"):
        layout.pack(nodes=X, adj=A + torch.triu(torch.ones(N, N, dtype=F64), 1))
    with pytest.raises(ValueError, match="diagonal=True"):
        layout.pack(nodes=X, adj=A + torch.eye(N, dtype=F64))
    with pytest.raises(ValueError, match=r"part 'nodes' must be \[B, 5, 2\]"):
        layout.pack(nodes=X[:, :, :1], adj=A)
    with pytest.raises(ValueError, match="unknown.*nodes, adj"):
        layout.pack(nodes=X, adj=A, edges=A)
    with pytest.raises(ValueError, match="batch sizes"):
        layout.pack(nodes=X[:2], adj=A)
    with pytest.raises(ValueError, match=r"packed state must be \[B, 20\]"):
        layout.unpack(torch.zeros(3, 21))
    with pytest.raises(TypeError, match="Dense"):
        Layout(nodes=(N, F))
    with pytest.raises(ValueError):
        Symmetric(1)
    with pytest.raises(ValueError, match="reserved"):
        Layout(strict=Dense(2))
    with pytest.raises(ValueError, match="scale"):
        Dense(3, scale=0.0)
    den = joint_denoiser(lambda X, A, t: (X,), layout, VP(), "x0")
    with pytest.raises(ModelOutputError, match="one prediction per part"):
        den.x0(layout.pack(nodes=X, adj=A), 0.5)
    den = joint_denoiser(lambda X, A, t: (X, A[:, :, :2]), layout, VP(), "x0")
    with pytest.raises(ModelOutputError, match="adj"):
        den.x0(layout.pack(nodes=X, adj=A), 0.5)
    nan = joint_denoiser(lambda X, A, t: (X * math.nan, A), layout, VP(), "x0")
    with pytest.raises(ModelOutputError):
        nan.x0(layout.pack(nodes=X, adj=A), 0.5)


def test_joint_net_registers_the_network_as_a_submodule():
    net = torch.nn.Linear(2, 2)
    layout = Layout(nodes=Dense(N, 2))
    joint = JointNet(lambda X, t: net(X), layout)
    assert list(joint.parameters()) == []  # a plain callable is not a module
    joint = JointNet(net, layout)
    assert [p is q for p, q in zip(joint.parameters(), net.parameters())] == [True, True]


def test_an_asymmetric_prediction_is_packed_as_its_symmetric_part():
    """A joint network's adjacency prediction ``P`` (not symmetric) enters the packed state as
    the upper triangle of ``(P + P^T) / 2``; its diagonal is dropped."""
    layout = _layout()
    g = torch.Generator().manual_seed(5)
    P = torch.randn(3, N, N, generator=g, dtype=F64)
    net = JointNet(lambda X, A, t: (X, P), layout)
    X, A = _graphs(1, batch=3)
    out = net(layout.pack(nodes=X, adj=A), torch.zeros(3, dtype=F64))
    want = torch.stack([torch.tensor([(P[b, i, j] + P[b, j, i]) / 2 for i in range(N) for j in range(i + 1, N)],
                                     dtype=F64) for b in range(3)])
    assert torch.equal(out[:, N * F:], want)
