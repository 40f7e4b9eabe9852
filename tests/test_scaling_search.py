"""Best-of-N, random, zero-order and path search; verifiers and cost counting."""
import pytest
import torch

from diffinfer import VP, sample
from diffinfer.scaling import run, search
from diffinfer.scaling.common import grid
from diffinfer.scaling.verifiers import (ClassLogProb, Ensemble, LogDensity, Normalized, RegionIndicator,
                                         Verifier, get_verifier)
from diffinfer.toys.tilted import tilted_example

F64 = torch.float64


def _setup():
    prior, reward, _ = tilted_example(1.0)
    return prior, prior.denoiser(VP()), reward


def test_best_of_n_returns_the_best_and_counts_per_sample_cost():
    prior, den, reward = _setup()
    res = search.best_of_n(den, reward, 64, (2,), steps=10, seed=0, batch_size=16, keep=3, dtype=F64)
    allr = res.info["all_rewards"]
    assert torch.equal(res.reward, torch.sort(allr, descending=True).values[:3])
    assert res.nfe == 64 * 10 and res.verifier_calls == 64 and res.cost == 64 * 11
    # the batch size does not change the candidates (per-sample streams)
    res2 = search.best_of_n(den, reward, 64, (2,), steps=10, seed=0, batch_size=64, keep=3, dtype=F64)
    assert torch.equal(res.x, res2.x)


def test_random_search_noise_reproduces_the_winner():
    prior, den, reward = _setup()
    res = search.random_search(den, reward, 32, (2,), steps=8, seed=1, dtype=F64)
    again = sample(den, x_T=res.info["x_T"], solver="euler", steps=8).x
    assert torch.allclose(again, res.x)
    with pytest.raises(ValueError, match="deterministic"):
        search.random_search(den, reward, 4, (2,), solver="ddpm")


def test_zero_order_search_never_gets_worse_and_counts():
    prior, den, reward = _setup()
    res = search.zero_order_search(den, reward, n_neighbors=8, iterations=6, shape=(2,), step=0.3, steps=8,
                                   seed=0, dtype=F64)
    h = res.info["history"]
    assert all(b >= a for a, b in zip(h, h[1:])) and h[-1] == float(res.reward)
    assert res.nfe == (1 + 6 * 8) * 8 and res.verifier_calls == 1 + 6 * 8
    assert torch.allclose(sample(den, x_T=res.info["x_T"], solver="euler", steps=8).x, res.x)


def test_search_methods_beat_best_of_n_plain_sampling_at_the_same_cost():
    """Search returns its best sample; the fair baseline is the best of as many plain samples
    as search's budget buys (best-of-N at equal verifier calls), not their mean. Over seeds,
    search's best must beat plain best-of-N on average and never fall clearly below it
    (measured: zero-order search gains about 0.02, path search ties within 0.004)."""
    prior, den, reward = _setup()
    gains = []
    for seed in range(3):
        zo = search.zero_order_search(den, reward, 8, 4, (2,), steps=10, seed=seed, dtype=F64)
        ps = search.path_search(den, reward, n_paths=4, branch=4, shape=(2,), steps=10, forward=1, backward=3,
                                seed=seed, dtype=F64)
        for res in (zo, ps):
            n = int(res.verifier_calls)
            plain = reward(sample(den, shape=(n, 2), solver="euler", steps=10, seed=1000 + seed, dtype=F64).x)
            gains.append(float(res.reward) - float(plain.max()))
    print("\nsearch best minus plain best-of-N:", [round(g, 4) for g in gains])
    assert sum(gains) / len(gains) > 0 and min(gains) > -0.01


def test_path_search_rounds_and_errors():
    prior, den, reward = _setup()
    res = search.path_search(den, reward, n_paths=3, branch=2, shape=(2,), steps=12, start=2, forward=1,
                             backward=3, seed=0, dtype=F64)
    assert res.info["rounds"] == 4 and res.x.shape == (1, 2)
    assert torch.allclose(reward(res.x), res.reward)
    with pytest.raises(ValueError, match="backward > forward"):
        search.path_search(den, reward, 2, 2, (2,), forward=2, backward=2)


@pytest.mark.parametrize("n,branch,start,fwd,bwd,keep,refine", [(3, 2, 2, 1, 3, None, 0), (5, 3, 3, 1, 2, 2, 0),
                                                                 (4, 4, 3, 1, 2, 2, 3), (2, 3, 1, 2, 3, 1, 2)])
def test_paths_cost_is_exact(n, branch, start, fwd, bwd, keep, refine):
    prior, den, reward = _setup()
    res = search.path_search(den, reward, n, branch, (2,), steps=8, start=start, forward=fwd, backward=bwd, keep=keep,
                             refine=refine, refine_forward=2, seed=0, dtype=F64)
    assert res.cost == search.paths_cost(n, branch, 8, start, fwd, bwd, keep, refine, refine_forward=2)


def test_path_search_keep_and_refine():
    prior, den, reward = _setup()
    for seed in range(3):
        kw = dict(steps=8, start=2, forward=1, backward=2, keep=2, seed=seed, dtype=F64)
        plain = search.path_search(den, reward, 6, 3, (2,), **kw)
        refined = search.path_search(den, reward, 6, 3, (2,), refine=4, **kw)
        # the same search, then refinement rounds that only accept a better clean sample
        assert torch.equal(refined.info["final_rewards"], plain.info["final_rewards"])
        assert float(refined.reward) >= float(plain.reward)
        hist = refined.info["history"][-4:]
        assert hist == sorted(hist) and hist[-1] == float(refined.reward)
        assert torch.allclose(reward(refined.x), refined.reward)
        assert plain.info["final_rewards"].shape == (2,)  # `keep` survivors are finished
    with pytest.raises(ValueError, match="keep >= 1"):
        search.path_search(den, reward, 2, 2, (2,), keep=0)
    with pytest.raises(ValueError, match="refine_forward must be at most"):
        search.path_search(den, reward, 2, 2, (2,), steps=4, refine=1, refine_forward=5)


def test_verifiers():
    prior, den, reward = _setup()
    x = prior.sample(10, seed=0)
    v = Verifier(LogDensity(prior))
    assert torch.allclose(v(x), prior.log_prob(x)) and v.calls == 10
    ind = RegionIndicator([0.0, 0.0], 1.0)(torch.tensor([[0.5, 0.5], [1.0, 1.0]]))
    assert ind.tolist() == [1.0, 0.0]
    clf = lambda z: torch.stack([z[:, 0], -z[:, 0]], 1)  # noqa: E731
    lp = ClassLogProb(clf, 1)(x)
    assert torch.allclose(lp.exp() + ClassLogProb(clf, 0)(x).exp(), torch.ones(10, dtype=F64))
    n = Normalized.fit(reward, prior.sample(1000, seed=1))
    r = n(prior.sample(1000, seed=1))
    assert abs(float(r.mean())) < 1e-9 and abs(float(r.std()) - 1) < 1e-9
    ens = Ensemble([reward, LogDensity(prior)], [2.0, 1.0])
    assert torch.allclose(ens(x), 2 * reward(x) + prior.log_prob(x))
    with pytest.raises(ValueError, match="NaN"):
        Verifier(lambda z: torch.full((z.shape[0],), float("nan")))(x)
    with pytest.raises(ValueError, match="shape"):
        Verifier(lambda z: torch.zeros(3))(x)
    with pytest.raises(ValueError, match="valid: class:K, density, region:RADIUS"):
        get_verifier("nope")
    assert get_verifier("class:3", classifier=clf).label == 3


def test_guided_search_cost_is_exact():
    prior, den, reward = _setup()
    n, refine, branch, keep, fwd = 5, 3, 2, 2, 3
    res = search.guided_search(den, reward, n, (2,), refine=refine, branch=branch, keep=keep, refine_forward=fwd,
                               steps=8, seed=0, dtype=F64)
    g = search.guided_steps(grid(den.process, 8), 0.4)
    assert g == 4 and res.info["guided_rows"] == n * g
    # forward passes of every step, the backward passes of the guided ones (2 NFE each), refinement
    assert res.nfe == n * 8 + 2 * n * g + refine * keep * branch * fwd
    # a score per proposal, 3 per differentiated reward row, a score per refinement copy
    assert res.verifier_calls == n + 3 * n * g + refine * keep * branch
    assert res.cost == search.guided_cost(n, 8, g, refine, branch, fwd, keep)


def test_guided_search_raises_the_reward_toward_its_known_optimum():
    prior, den, reward = _setup()  # the reward is a Gaussian log-likelihood: 0 is its maximum
    plain = reward(sample(den, shape=(256, 2), solver="ddim", steps=8, seed=5, dtype=F64).x)
    proposals = []
    for seed in range(4):
        res = search.guided_search(den, reward, 6, (2,), refine=4, branch=2, keep=2, steps=8, seed=seed, dtype=F64)
        proposals.append(res.info["proposal_rewards"])
        h = res.info["history"]
        assert h == sorted(h) and h[-1] == float(res.reward) and h[0] == float(res.info["proposal_rewards"].max())
        assert torch.allclose(reward(res.x), res.reward) and -0.01 < float(res.reward) <= 0.0
    assert float(torch.cat(proposals).mean()) > float(plain.mean()) + 0.3  # guidance moves the proposals


def test_guided_search_errors():
    prior, den, reward = _setup()
    with pytest.raises(ValueError, match="not differentiable"):
        search.guided_search(den, lambda x: reward(x.detach()), 2, (2,), steps=4, dtype=F64)
    with pytest.raises(ValueError, match="keep <= n"):
        search.guided_search(den, reward, 2, (2,), keep=3, steps=4, dtype=F64)
    with pytest.raises(ValueError, match="refine_forward must lie"):
        search.guided_search(den, reward, 2, (2,), refine=1, refine_forward=5, steps=4, dtype=F64)
    with pytest.raises(ValueError, match="scale > 0"):
        search.guided_search(den, reward, 2, (2,), scale=0.0, steps=4, dtype=F64)
    with pytest.raises(ValueError, match="below one guided sample"):
        run("guided-search", den, reward, 20, (2,), steps=8, dtype=F64)
    with pytest.raises(ValueError, match="one-evaluation solvers"):
        run("guided-search", den, reward, 500, (2,), steps=8, solver="heun", dtype=F64)


def test_guided_search_budget_sizing():
    prior, den, reward = _setup()
    for budget in (29, 100, 351):
        res = run("guided-search", den, reward, budget, (2,), steps=8, seed=1, dtype=F64)
        n = max(1, (budget // 2) // 29)  # 29 = 6 * 4 guided + 4 unguided steps + 1 score
        assert res.info["proposal_rewards"].shape == (n,) and budget - 20 < res.cost <= budget


def test_class_log_prob_follows_the_grad_mode():
    lin = torch.nn.Linear(2, 3).double()  # parameters require grad
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    lp = ClassLogProb(lin, 2)
    assert lp(x).grad_fn is None  # x does not require grad: no graph, whatever the parameters
    xg = x.clone().requires_grad_(True)
    with torch.no_grad():
        assert lp(xg).grad_fn is None
    (g,) = torch.autograd.grad(lp(xg).sum(), xg)
    p = torch.softmax(lin(x), 1).detach()  # d log p_2 / dx = W_2 - sum_c p_c W_c
    assert torch.allclose(g, lin.weight[2].detach() - p @ lin.weight.detach())
