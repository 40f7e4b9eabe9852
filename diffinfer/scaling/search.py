"""Search over starting noise and paths, scored by a verifier.

Ma et al. 2025, "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising
Steps", section 3: a verifier scores candidates and an algorithm proposes them.

- ``best_of_n``: draw ``N`` samples, keep the best (any solver).
- ``random_search``: best-of-N over starting noises with a deterministic solver, so the
  winning noise is returned and reproduces its sample.
- ``zero_order_search``: start from a pivot noise; each round scores ``N`` neighbours on
  the sphere of radius ``step * sqrt(D)`` around the pivot and moves the pivot to the best
  of them if it improves (Ma et al., "Zero-Order Search").
- ``path_search``: run ``N`` paths to an intermediate time; repeatedly branch each into
  ``M`` copies, re-noise them forward ``forward`` grid steps, denoise ``backward`` steps
  (``backward > forward``), score ``x0_hat`` and keep the best ``N``; finish the survivors
  and return the best (Ma et al., "Search over Paths").
- ``guided_search``: gradient-guided proposals (universal guidance, Bansal et al. 2023), the
  best polished by path search at the end of the grid (``refine_sample``).

Costs are per-sample network evaluations and verifier calls (``ScalingResult.cost``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import solvers as solver_registry
from ..denoiser import DenoiserBase
from ..guidance import RewardGuidance
from ..rng import SampleRNG
from ..loop import initial_noise, sample
from ..loop import rollout
from .common import ScalingResult, Tap, grid, sample_shape
from .verifiers import GradientCounter, as_verifier


def _prepare(den: DenoiserBase, reward, solver, steps: int, ts, solver_options: dict):
    """``(solver, verifier, verifier calls so far, Tap over den, grid)``: a search's set-up."""
    verifier = as_verifier(reward)
    return (solver_registry.get(solver, **solver_options), verifier, verifier.calls, Tap(den),
            grid(den.process, steps, ts))


def _sample_batches(tap: DenoiserBase, n: int, shape, solver, ts, seed: int, batch_size: int, dtype, device,
                    offset: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` samples and their starting noises, row ``j`` from stream ``(seed, offset + j)``."""
    xs, noises = [], []
    for start in range(0, n, batch_size):
        idx = list(range(offset + start, offset + min(n, start + batch_size)))
        rng = SampleRNG.from_seed(seed, indices=idx, device=device)
        x_T = initial_noise(tap, (len(idx),) + shape, ts, rng, dtype=dtype, device=device)
        # step noise (stochastic solvers) from streams disjoint from the starting-noise streams
        res = sample(tap, x_T=x_T, solver=solver, ts=ts, seed=(seed, [i + 10**9 for i in idx]))
        xs.append(res.x)
        noises.append(x_T)
    return torch.cat(xs), torch.cat(noises)


def best_of_n(den: DenoiserBase, reward, n: int, shape, solver="euler", steps: int = 20, ts=None,
              seed: int = 0, batch_size: int = 256, keep: int = 1, dtype=torch.float32, device="cpu",
              **solver_options) -> ScalingResult:
    """Draw ``n`` samples and return the ``keep`` best by ``reward`` (Ma et al. 2025; the
    rejection-style baseline of every scaling paper).

    ``info`` holds ``all_rewards`` ``[n]`` and the winners' starting noise ``x_T``.
    """
    if int(n) < 1 or not 1 <= int(keep) <= int(n):
        raise ValueError(f"need n >= 1 and 1 <= keep <= n, got n={n}, keep={keep}")
    solver, verifier, calls0, tap, ts = _prepare(den, reward, solver, steps, ts, solver_options)
    x, x_T = _sample_batches(tap, int(n), sample_shape(shape), solver, ts, seed, int(batch_size), dtype, device)
    r = verifier(x)
    top = torch.topk(r.double(), int(keep)).indices
    return ScalingResult(x=x[top], reward=r[top], nfe=tap.rows, verifier_calls=verifier.calls - calls0,
                         method="best-of-n", info={"all_rewards": r, "x_T": x_T[top]})


def random_search(den: DenoiserBase, reward, n: int, shape, solver="euler", steps: int = 20, ts=None,
                  seed: int = 0, batch_size: int = 256, dtype=torch.float32, device="cpu",
                  **solver_options) -> ScalingResult:
    """Random search over starting noise (Ma et al. 2025): best-of-N with a deterministic
    solver, so ``info['x_T']`` (the best noise) regenerates the best sample exactly."""
    solver = solver_registry.get(solver, **solver_options)
    if solver.stochastic:
        raise ValueError(f"random search is over starting noise and needs a deterministic solver; "
                         f"{solver.name!r} is stochastic (use best_of_n for stochastic solvers)")
    res = best_of_n(den, reward, n, shape, solver=solver, steps=steps, ts=ts, seed=seed,
                    batch_size=batch_size, dtype=dtype, device=device)
    res.method = "random-search"
    return res


def zero_order_search(den: DenoiserBase, reward, n_neighbors: int, iterations: int, shape, step: float = 0.5,
                      solver="euler", steps: int = 20, ts=None, seed: int = 0, dtype=torch.float32,
                      device="cpu", **solver_options) -> ScalingResult:
    """Zero-order search over starting noise (Ma et al. 2025, section 3.2).

    Round 0 scores a random pivot; each of ``iterations`` rounds scores ``n_neighbors``
    noises ``pivot + step * sqrt(D) * u`` (``u`` uniform on the unit sphere) and moves the
    pivot to the best one if it beats the pivot. Cost: ``(1 + iterations * n_neighbors)``
    sampler runs and as many verifier calls. ``info['history']`` is the best reward per round.
    """
    if int(n_neighbors) < 1 or int(iterations) < 0 or not step > 0:
        raise ValueError(f"need n_neighbors >= 1, iterations >= 0, step > 0; got {n_neighbors}, {iterations}, {step}")
    solver = solver_registry.get(solver, **solver_options)
    if solver.stochastic:
        raise ValueError(f"zero-order search moves the starting noise and needs a deterministic solver; "
                         f"{solver.name!r} is stochastic")
    verifier = as_verifier(reward)
    calls0 = verifier.calls
    tap = Tap(den)
    ts = grid(den.process, steps, ts)
    shape = sample_shape(shape)
    scale = float(den.process.sigma(ts[0]))
    rng = SampleRNG.from_seed(seed, batch=1, device=device)
    pivot = rng.randn(shape, dtype=dtype, device=device)  # [1, *shape], unit-variance noise
    best_x = sample(tap, x_T=pivot * scale, solver=solver, ts=ts).x
    best_r = verifier(best_x)
    history = [float(best_r)]
    dim = math.prod(shape)
    for k in range(int(iterations)):
        u = SampleRNG.from_seed(seed, indices=[(k + 1) * 100003 + j for j in range(int(n_neighbors))],
                                device=device).randn(shape, dtype=dtype, device=device)  # [M, *shape]
        u = u / u.reshape(u.shape[0], -1).norm(dim=1).reshape((-1,) + (1,) * len(shape))
        cand = pivot + step * math.sqrt(dim) * u
        xs = sample(tap, x_T=cand * scale, solver=solver, ts=ts).x
        r = verifier(xs)
        j = int(torch.argmax(r.double()))
        if float(r[j]) > float(best_r):
            pivot, best_x, best_r = cand[j:j + 1], xs[j:j + 1], r[j:j + 1]
        history.append(float(best_r))
    return ScalingResult(x=best_x, reward=best_r.reshape(1), nfe=tap.rows, verifier_calls=verifier.calls - calls0,
                         method="zero-order", info={"history": history, "x_T": pivot * scale})


def path_search(den: DenoiserBase, reward, n_paths: int, branch: int, shape, solver="euler", steps: int = 20,
                ts=None, start: int | None = None, forward: int = 1, backward: int = 3, keep: int | None = None,
                refine: int = 0, refine_forward: int = 3, seed: int = 0, dtype=torch.float32, device="cpu",
                **solver_options) -> ScalingResult:
    """Search over paths (Ma et al. 2025, section 3.2).

    ``n_paths`` noises are denoised to grid index ``start`` (default a quarter of the
    way). Then, until the grid's last interval: each survivor is copied ``branch`` times,
    re-noised forward ``forward`` grid steps with fresh noise (``Process.renoise``: the exact
    forward transition), denoised ``backward`` steps, scored on ``x0_hat``; the best
    ``keep`` survive (default ``n_paths``, the paper's setting; ``keep < n_paths`` explores
    widely in the first round and refines few paths after it). The survivors are finished
    and the best kept.

    ``refine`` rounds then search paths at the end of the grid: the best clean sample is
    copied ``branch`` times, re-noised from ``t = 0`` to ``ts[-1 - refine_forward]`` and
    denoised back to ``t = 0``; the best of the copies replaces it only if it scores higher
    (copies and parent are clean samples, so their rewards compare exactly and the
    returned reward never decreases). ``refine = 0`` is Ma et al.'s algorithm.
    Cost: ``paths_cost``.
    """
    if int(backward) <= int(forward) or int(forward) < 1:
        raise ValueError(f"need backward > forward >= 1 so paths progress, got forward={forward}, backward={backward}")
    if int(refine) < 0 or not 1 <= int(refine_forward):
        raise ValueError(f"need refine >= 0 and refine_forward >= 1, got {refine}, {refine_forward}")
    if int(n_paths) < 1 or int(branch) < 1 or (keep is not None and int(keep) < 1):
        raise ValueError(f"need n_paths >= 1, branch >= 1 and keep >= 1, got {n_paths}, {branch}, {keep}")
    solver, verifier, calls0, tap, ts = _prepare(den, reward, solver, steps, ts, solver_options)
    n_int = ts.numel() - 1
    start = max(1, n_int // 4) if start is None else int(start)
    if not 0 <= start < n_int:
        raise ValueError(f"start must index the grid's intervals [0, {n_int}), got {start}")
    if int(refine) > 0 and int(refine_forward) > n_int:
        raise ValueError(f"refine_forward must be at most the grid's {n_int} intervals, got {refine_forward}")
    shape = sample_shape(shape)
    n = int(n_paths)
    survivors = n if keep is None else int(keep)

    def step_rng(tag: int, rows: int):
        return SampleRNG.from_seed(seed, indices=[tag * 1000003 + j for j in range(rows)], device=device)

    rng0 = step_rng(0, n)
    x = initial_noise(tap, (n,) + shape, ts, rng0, dtype=dtype, device=device)
    x, _ = rollout(tap, solver, x, ts, 0, start, rng=rng0 if solver.stochastic else None)
    i, rounds, history = start, 0, []
    while i + backward - forward < n_int:
        rounds += 1
        j = max(i - int(forward), 0)
        k = i + int(backward) - int(forward)
        cand = x.repeat_interleave(int(branch), dim=0)  # [N*M, ...]
        rng = step_rng(rounds, cand.shape[0])
        cand = tap.process.renoise(cand, ts[i], ts[j], rng.randn_like(cand))
        cand, _ = rollout(tap, solver, cand, ts, j, k, rng=rng if solver.stochastic else None)
        r = verifier(tap.x0(cand, ts[k]))
        best = torch.topk(r.double(), min(survivors, cand.shape[0])).indices
        x, i = cand[best], k
        history.append(float(r[best].max()))
    rng = step_rng(rounds + 1, x.shape[0])
    x, _ = rollout(tap, solver, x, ts, i, n_int, rng=rng if solver.stochastic else None)
    r = verifier(x)
    best = int(torch.argmax(r.double()))
    final_rewards, x, r = r, x[best:best + 1], r[best:best + 1]
    x, r = refine_sample(tap, verifier, solver, ts, x, r, int(refine), int(branch), int(refine_forward),
                         lambda m, rows: step_rng(rounds + 2 + m, rows), history)
    return ScalingResult(x=x, reward=r, nfe=tap.rows, verifier_calls=verifier.calls - calls0, method="paths",
                         info={"history": history, "rounds": rounds, "final_rewards": final_rewards})


def refine_sample(tap: Tap, verifier, solver, ts: Tensor, x: Tensor, r: Tensor, rounds: int, branch: int,
                  refine_forward: int, round_rng, history: list | None = None) -> tuple[Tensor, Tensor]:
    """Search over paths at the end of the grid (``path_search``'s ``refine`` rounds), on a
    population of ``P`` clean samples ``x`` ``[P, ...]`` with rewards ``r`` ``[P]``.

    Each of ``rounds`` rounds copies every sample ``branch`` times, re-noises the copies from
    ``t = 0`` to ``ts[-1 - refine_forward]`` with the exact forward transition (``Process.renoise``;
    noise from ``round_rng(m, rows)``, a ``SampleRNG`` of ``P * branch`` rows) and denoises them
    back to ``t = 0``; the best ``P`` of parents and copies survive (a parent wins a tie), so
    the best reward never decreases. With ``P = 1`` a copy replaces the sample only if it
    scores higher. Appends the best reward after each round to ``history``; returns the
    population sorted by reward (best first). Cost: ``rounds * P * branch * (refine_forward
    * evals_per_step + 1)``.
    """
    n_int = ts.numel() - 1
    j = n_int - int(refine_forward)
    pop = x.shape[0]
    for m in range(int(rounds)):
        cand = x.repeat_interleave(int(branch), dim=0)  # [P*M, ...] copies of the population
        rng = round_rng(m, cand.shape[0])
        cand = tap.process.renoise(cand, ts[n_int], ts[j], rng.randn_like(cand))
        cand, _ = rollout(tap, solver, cand, ts, j, n_int, rng=rng if solver.stochastic else None)
        rc = verifier(cand)  # [P*M]
        pool_x, pool_r = torch.cat([x, cand]), torch.cat([r, rc])
        keep = torch.sort(pool_r.double(), descending=True, stable=True).indices[:pop]
        x, r = pool_x[keep], pool_r[keep]
        if history is not None:
            history.append(float(r.max()))
    order = torch.sort(r.double(), descending=True, stable=True).indices
    return x[order], r[order]


def guided_steps(ts: Tensor, t_min: float) -> int:
    """How many of a grid's steps ``ts[i] -> ts[i + 1]`` start at ``t >= t_min`` (the guided ones)."""
    return int((ts[:-1] >= float(t_min)).sum())


def guided_search(den: DenoiserBase, reward, n: int, shape, refine: int = 0, branch: int = 4, keep: int = 1,
                  refine_forward: int | None = None, scale: float = 0.3, t_min: float = 0.4, solver="ddim",
                  steps: int = 8, ts=None, seed: int = 0, batch_size: int = 256, dtype=torch.float32,
                  device="cpu", normalized: bool = True, **solver_options) -> ScalingResult:
    """Gradient-guided proposals, then search over paths to polish the best one.

    1. Propose ``n`` samples with forward universal guidance (Bansal et al. 2023, "Universal
       Guidance for Diffusion Models", eq. 6; ``guidance.RewardGuidance``): the score gains
       ``scale * grad_{x_t} reward(x0_hat(x_t))`` at the grid's steps with ``t >= t_min``, where
       a sample's coarse content (a digit's class) is decided; later steps are unguided.
       With ``normalized`` (default) the step has a fixed size whatever the reward's units:
       each guided evaluation moves ``x0_hat`` by ``scale * data_scale`` RMS per entry in the
       reward gradient's direction (``RewardGuidance(normalized=True)``), so a reward with
       large gradients cannot blow the samples up; ``normalized=False`` adds the raw
       gradient. A run that leaves the data's scale anyway raises
       ``guidance.GuidanceDivergenceError`` naming ``guided_search`` and the scale to lower.
       The best proposal by ``reward`` is kept (best-of-N over guided samples).
    2. ``refine`` rounds of path search at the end of the grid (Ma et al. 2025, "Inference-Time
       Scaling for Diffusion Models beyond Scaling Denoising Steps", search over paths;
       ``refine_sample``) on the best ``keep`` proposals: ``branch`` copies of each, re-noised
       to ``ts[-1 - refine_forward]`` (default half the grid) and denoised without guidance;
       the best ``keep`` of parents and copies survive. Returns the best one.

    Gradient search finds a high-reward mode reliably but is poor at the last digits of the
    reward; search over paths polishes a found sample but rarely finds a rare mode (a
    population, ``keep > 1``, hedges against a sample that no copy improves). ``reward``
    must be differentiable in ``x0`` while grad mode is on (it is enabled inside the guided
    steps even under ``torch.no_grad``).

    Cost (exact, ``guided_cost`` for one-evaluation solvers): a guided step costs 1 NFE (the
    forward pass) + 2 NFE (its backward pass) + 3 verifier calls (the reward's forward and
    backward pass) per row; an unguided step 1 NFE; each proposal 1 verifier call; each refine
    round ``branch * (refine_forward + 1)``. ``info``: ``proposal_rewards`` ``[n]``, the
    reward ``history`` (best proposal, then after each round), ``guided_rows``.
    """
    if int(n) < 1 or int(refine) < 0 or int(branch) < 1 or not 1 <= int(keep) <= int(n):
        raise ValueError(f"need n >= 1, refine >= 0, branch >= 1 and 1 <= keep <= n, got n={n}, "
                         f"refine={refine}, branch={branch}, keep={keep}")
    if not scale > 0 or not 0.0 <= float(t_min) <= 1.0:
        raise ValueError(f"need scale > 0 and 0 <= t_min <= 1, got scale={scale}, t_min={t_min}")
    solver, verifier, calls0, tap, ts = _prepare(den, reward, solver, steps, ts, solver_options)
    n_int = ts.numel() - 1
    refine_forward = max(1, n_int // 2) if refine_forward is None else int(refine_forward)
    if not 1 <= refine_forward <= n_int:
        raise ValueError(f"refine_forward must lie in [1, {n_int}] (the grid's intervals), got {refine_forward}")
    grad_reward = GradientCounter(verifier.fn)
    guided = RewardGuidance(tap, grad_reward, scale=float(scale), interval=(float(t_min), 1.0),
                            normalized=normalized, method="guided_search (universal guidance)")
    x, _ = _sample_batches(guided, int(n), sample_shape(shape), solver, ts, seed, int(batch_size), dtype, device)
    r = verifier(x)  # [n]
    top = torch.sort(r.double(), descending=True, stable=True).indices[:int(keep)]
    proposals, x, r = r, x[top], r[top]  # the best `keep` proposals [P, ...]
    history = [float(r.max())]
    x, r = refine_sample(tap, verifier, solver, ts, x, r, int(refine), int(branch), refine_forward,
                         lambda m, rows: SampleRNG.from_seed(seed, indices=[(m + 1) * 1000003 + 10**8 + j
                                                                            for j in range(rows)], device=device),
                         history)
    x, r = x[:1], r[:1]
    g = grad_reward.rows
    return ScalingResult(x=x, reward=r, nfe=tap.rows + GradientCounter.NFE_PER_ROW * g,
                         verifier_calls=verifier.calls - calls0 + GradientCounter.VERIFIER_CALLS_PER_ROW * g,
                         method="guided-search",
                         info={"proposal_rewards": proposals, "history": history, "guided_rows": g})


def guided_cost(n: int, n_int: int, n_guided: int, refine: int = 0, branch: int = 4, refine_forward: int = 1,
                keep: int = 1) -> int:
    """The exact cost of ``guided_search`` with a one-evaluation solver on a grid of ``n_int``
    intervals of which ``n_guided`` are guided (``guided_steps``): per proposal ``6`` per guided
    step (3 NFE + 3 verifier calls), ``1`` per unguided step and ``1`` verifier call; per refine
    round ``keep * branch * (refine_forward + 1)``."""
    per_sample = 6 * int(n_guided) + (int(n_int) - int(n_guided)) + 1
    return int(n) * per_sample + int(refine) * int(keep) * int(branch) * (int(refine_forward) + 1)


def paths_cost(n_paths: int, branch: int, n_int: int, start: int, forward: int = 1, backward: int = 3,
               keep: int | None = None, refine: int = 0, refine_forward: int = 3) -> int:
    """The exact cost (per-sample NFE + verifier calls) of ``path_search`` on a grid of
    ``n_int`` intervals: ``start`` steps per path, the denoising steps back from the re-noised
    level (``backward``, fewer where re-noising stops at the grid's start) plus ``x0_hat`` plus a
    verifier call per candidate and round, the survivors' last steps plus their scores, and
    ``refine_forward`` steps plus a score per refinement copy."""
    n, keep = int(n_paths), int(n_paths if keep is None else keep)
    cost, i = n * int(start), int(start)
    while i + backward - forward < n_int:
        k = i + backward - forward
        cost += n * branch * (k - max(i - forward, 0) + 2)  # the denoising steps, x0_hat, the verifier
        n = min(keep, n * branch)
        i = k
    return cost + n * (n_int - i + 1) + int(refine) * branch * (int(refine_forward) + 1)
