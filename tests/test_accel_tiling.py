"""Any-size tiling (``accel.tiling.Tiled``) on an exact oracle: a stationary MA(2) process.

``x_n = e_n + 0.8 e_{n-1} + 0.4 e_{n-2}`` has the banded covariance ``gamma = (1.8, 1.12,
0.4, 0, ...)``; every window of ``w`` positions is ``N(0, Gamma_w)`` (a one-component
``GaussianMixture``), whose exact denoiser is the window model. What is exact, and what not:

- one tile covering the canvas is the window model itself (bitwise);
- the windowed posterior mean ``E[x0_n | x_t in the window]`` is *not* the full one
  ``E[x0_n | x_t on the canvas]``: ``(a^2 Gamma + s^2 I)^{-1}`` is not banded, so a tile
  misses context beyond its edges; the error decays geometrically with the distance to the
  edge (checked in closed form below);
- so the tiled sampler is approximate. Its output law is computed *exactly*: the window
  denoiser is linear and the offsets depend only on the step, so a deterministic solver
  is a linear map ``x_T -> x_0`` and the output covariance is ``sigma_T^2 M M^T`` (``M``'s
  columns: the solve from the unit vectors). Its per-position variances and lag-k
  covariances must lie within the floor of two exact sample sets of the long process at
  ``N_FLOOR`` samples (the largest deviation over positions and lags ``0..3``, worst of 8
  pairs). Shifting, overlapping, Hann-blended tiles meet it on every deterministic solver
  (by a factor of about 10); fixed tiles without overlap do not (a seam), the negative
  control. Stochastic solvers are checked by sampling, paired with the full-canvas model.
"""
import pytest
import torch

import diffinfer as di
from diffinfer.accel.tiling import Tiled, tile_starts, window
from diffinfer.toys.gaussian_mixture import GaussianMixture

F64 = torch.float64
THETA = (1.0, 0.8, 0.4)
Q = len(THETA) - 1
L, W = 48, 16
MAX_LAG = Q + 1
N_FLOOR = 4000
DETERMINISTIC = [n for n in di.solvers.names() if n != "adaptive" and not di.solvers.get(n).stochastic]
STOCHASTIC = [n for n in di.solvers.names() if di.solvers.get(n).stochastic]


def ma_cov(n: int) -> torch.Tensor:
    th = torch.tensor(THETA, dtype=F64)
    g = torch.zeros(n, dtype=F64)
    for k in range(Q + 1):
        g[k] = (th[: Q + 1 - k] * th[k:]).sum()
    idx = torch.arange(n)
    return g[(idx[:, None] - idx[None, :]).abs()]


GAMMA = ma_cov(L)
PROC = di.VP()


def model(n: int):
    return GaussianMixture(torch.zeros(1, n, dtype=F64), ma_cov(n)[None]).denoiser(PROC)


def lag_error(C: torch.Tensor) -> float:
    """Largest |C(n, n+k) - gamma(k)| over positions n and lags k = 0..MAX_LAG."""
    d = C - GAMMA
    return max(float(d.diagonal(k).abs().max()) for k in range(MAX_LAG + 1))


def floor(n: int = N_FLOOR, repeats: int = 8) -> float:
    """``lag_error`` of the empirical covariance of ``n`` exact samples, worst of ``repeats``."""
    chol = torch.linalg.cholesky(GAMMA)
    g = torch.Generator().manual_seed(10_000)
    worst = 0.0
    for _ in range(repeats):
        x = torch.randn(n, L, dtype=F64, generator=g) @ chol.T
        worst = max(worst, lag_error(x.T @ x / n))  # the mean is known (0)
    return worst


FLOOR = floor()


def exact_law(den, solver: str, steps: int) -> torch.Tensor:
    """The output covariance of a deterministic solve with a linear model, by linearity."""
    ts = di.grids.resolve(PROC, steps, None)
    s_T = float(PROC.sigma(ts[0]))
    M = di.sample(den, x_T=torch.eye(L, dtype=F64), solver=solver, ts=ts).x.T  # [L, L]: column i = M e_i
    return s_T ** 2 * M @ M.T


def test_one_tile_is_the_model():
    den = model(W)
    tiled = Tiled(den, W)
    x = torch.randn(5, W, dtype=F64, generator=torch.Generator().manual_seed(0))
    for t in (0.3, torch.full((5,), 0.7, dtype=F64)):
        p, q = den.predict(x, t), tiled.predict(x, t)
        assert torch.equal(p.x0, q.x0) and torch.equal(p.eps, q.eps)
    a = di.sample(den, shape=(3, W), dtype=F64, solver="dpmpp-2m", steps=8, seed=1).x
    b = di.sample(tiled, shape=(3, W), dtype=F64, solver="dpmpp-2m", steps=8, seed=1).x
    assert torch.equal(a, b)


def test_the_windowed_posterior_mean_misses_context_beyond_the_edge():
    """Closed form: the window's x0 prediction at position j vs the full canvas's, as the
    RMS over x_t ~ p_t (``sqrt(e_j^T D Sigma_t D^T e_j)``, ``D`` the difference of the two
    linear maps): nonzero everywhere, largest at the edge, decaying toward the centre."""
    t = 0.5
    a, s = float(PROC.alpha(torch.tensor(t))), float(PROC.sigma(torch.tensor(t)))
    Sig = a * a * GAMMA + s * s * torch.eye(L, dtype=F64)
    full = a * GAMMA @ torch.linalg.inv(Sig)  # E[x0 | x_t] = full @ x_t
    lo = 16  # a window at positions 16..31 of the canvas
    Gw = GAMMA[lo:lo + W, lo:lo + W]
    win = torch.zeros(W, L, dtype=F64)
    win[:, lo:lo + W] = a * Gw @ torch.linalg.inv(a * a * Gw + s * s * torch.eye(W, dtype=F64))
    D = win - full[lo:lo + W]
    err = torch.einsum("jm,mn,jn->j", D, Sig, D).sqrt()  # [W]
    edge, centre = float(err[0]), float(err[W // 2])
    assert edge > 0.1 and centre > 0  # the window's prediction is not the full one
    assert centre < 1e-3 * edge
    assert all(float(err[j + 1]) < float(err[j]) for j in range(W // 2 - 1))  # decays inward


@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_tiled_law_is_within_the_floor_on_every_deterministic_solver(solver):
    steps = 40
    full = exact_law(model(L), solver, steps)
    tiled = exact_law(Tiled(model(W), W), solver, steps)  # stride 8, Hann, random offsets
    assert lag_error(tiled) - lag_error(full) <= 0.25 * FLOOR  # what tiling adds to the solver's own error
    if lag_error(full) <= 0.5 * FLOOR:  # the solver itself converged: the law as a user gets it
        assert lag_error(tiled) <= FLOOR, (lag_error(tiled), FLOOR)


def test_fixed_tiles_without_overlap_leave_a_seam_and_shifting_reduces_it():
    """The negative control: non-overlapping fixed tiles make the seam positions
    independent (lag-1 covariance 0 instead of 1.12), far outside the floor. Shifting the
    tiles each step (FSTD) spreads the seam: the error drops, though not to the floor."""
    full = lag_error(exact_law(model(L), "dpmpp-2m", 40))
    fixed = lag_error(exact_law(Tiled(model(W), W, stride=W, offsets="fixed", weights="uniform"), "dpmpp-2m", 40))
    fstd = lag_error(exact_law(Tiled(model(W), W, stride=W, offsets="random", weights="uniform"), "dpmpp-2m", 40))
    assert full < FLOOR < fixed and fixed > 0.9 * float(GAMMA[0, 1])
    assert fstd < 0.5 * fixed


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_tiled_samples_match_the_long_process_on_stochastic_solvers(solver):
    """With the same noise streams, the tiled sampler's empirical covariance differs from the
    full-canvas model's by far less than the floor (the solver's own discretisation error,
    e.g. DDPM's at 30 steps, is the same with or without tiles)."""
    n = 500
    full = di.sample(model(L), shape=(n, L), dtype=F64, solver=solver, steps=30, seed=2).x
    tiled = di.sample(Tiled(model(W), W), shape=(n, L), dtype=F64, solver=solver, steps=30, seed=2).x
    d = (tiled.T @ tiled - full.T @ full) / n
    assert max(float(d.diagonal(k).abs().max()) for k in range(MAX_LAG + 1)) <= 0.25 * FLOOR


def test_a_tiled_warm_start_from_exact_draws_keeps_the_law():
    """Warm start and tiling compose: from an exact long draw noised to t* = 0.4, the tiled
    solve's output covariance ``M (a^2 Gamma + s^2 I) M^T`` (``M`` the truncated solve's linear
    map) is within the floor, as is the full-canvas model's."""
    from diffinfer.loop import truncate_grid

    t_star = 0.4
    ts = truncate_grid(di.grids.resolve(PROC, 40, None), t_star)
    a, s = float(PROC.alpha(torch.tensor(t_star, dtype=F64))), float(PROC.sigma(torch.tensor(t_star, dtype=F64)))
    cov_t = a * a * GAMMA + s * s * torch.eye(L, dtype=F64)  # the law of x_{t*}
    for den in (model(L), Tiled(model(W), W)):
        M = di.sample(den, x_T=torch.eye(L, dtype=F64), solver="dpmpp-2m", ts=ts).x.T
        assert lag_error(M @ cov_t @ M.T) <= 0.5 * FLOOR


def test_tiles_cover_the_canvas_and_shift_every_step():
    for length, tile, stride in [(16, 8, 8), (48, 16, 8), (20, 8, 6), (8, 8, 4)]:
        for o in range(stride):
            st = tile_starts(length, tile, stride, o)
            cover = torch.zeros(length)
            for s in st:
                assert 0 <= s <= length - tile
                cover[s:s + tile] += 1
            assert bool((cover > 0).all())
    tiled = Tiled(model(W), W)
    grid = di.grids.Grid(PROC, di.grids.resolve(PROC, 20, None))
    offsets = {tiled.offset(grid.point(k)) for k in range(20)}
    assert len(offsets) > 3  # positions change from step to step
    assert window("hann", 8).min() > 0


def test_a_sample_is_the_same_alone_or_in_a_batch():
    tiled = Tiled(model(W), W)
    batch = di.sample(tiled, shape=(4, L), dtype=F64, solver="ddpm", steps=10, seed=(3, [0, 1, 2, 3])).x
    alone = di.sample(tiled, shape=(1, L), dtype=F64, solver="ddpm", steps=10, seed=(3, [2])).x
    torch.testing.assert_close(alone[0], batch[2], rtol=1e-12, atol=1e-12)


def test_conditions_follow_their_rows_and_one_call_per_step():
    """Each tile sees its own row's label; the blend is consistent (alpha x0 + sigma eps = x);
    all tiles go through the network in one call."""
    def net(x, t, label):  # an eps network that outputs the row's label
        assert label.shape == (x.shape[0],)
        return label.to(x.dtype).reshape(-1, 1, 1, 1).expand_as(x).clone()

    den = di.Denoiser(net, PROC, prediction="eps", cond={"label": torch.tensor([1, 2, 3])})
    tiled = Tiled(den, (8, 8))
    x = torch.randn(3, 1, 16, 20, dtype=F64)
    n0 = den.nfe
    p = tiled.predict(x, 0.4)
    assert den.nfe - n0 == 1
    for b in range(3):
        assert torch.allclose(p.eps[b], torch.full_like(p.eps[b], b + 1.0))
    a, s = float(PROC.alpha(torch.tensor(0.4, dtype=F64))), float(PROC.sigma(torch.tensor(0.4, dtype=F64)))
    torch.testing.assert_close(a * p.x0 + s * p.eps, x, rtol=1e-12, atol=1e-12)


def test_one_time_per_row_reaches_each_rows_tiles():
    """With a time per row (as guidance wrappers pass it), each row's tiles get that row's
    time: the batch equals the rows run one by one (fixed offsets: at times that are not
    grid points the offsets follow the first row's time)."""
    tiled = Tiled(model(W), W, offsets="fixed")
    x = torch.randn(3, L, dtype=F64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    both = tiled.predict(x, t)
    for b in range(3):
        one = tiled.predict(x[b:b + 1], t[b:b + 1])
        torch.testing.assert_close(both.x0[b:b + 1], one.x0, rtol=1e-12, atol=1e-12)


def test_bad_tiling_input_is_refused():
    den = model(W)
    with pytest.raises(ValueError, match="smaller than the tile"):
        Tiled(den, W).predict(torch.zeros(2, W - 1, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="stride must give 1 <= stride <= tile"):
        Tiled(den, W, stride=W + 1)
    with pytest.raises(ValueError, match="unknown offsets 'spiral'; valid: random, cyclic, fixed"):
        Tiled(den, W, offsets="spiral")
    with pytest.raises(ValueError, match="unknown weights 'gauss'; valid: uniform, hann"):
        Tiled(den, W, weights="gauss")
    with pytest.raises(TypeError, match="den must be a Denoiser"):
        Tiled(lambda x, t: x, W)
