"""Diffusion Tree Sampling reaches the tilted target and improves with rollouts; DTS* searches.

Tolerances for DTS (1024 rollouts, DDPM 100 steps, tree levels every 25 steps, 3 seeds),
the same as for SMC: |mean error| < 0.06, |covariance error| < 0.08, mode weights within
0.03; the DDPM base sampler at 100 steps is itself about 0.02-0.03 off the prior.
"""
import pytest
import torch

from diffinfer import VP
from diffinfer.scaling.tree import DiffusionTree, dts, dts_star
from diffinfer.toys.tilted import mode_fractions, tilted_example

F64 = torch.float64


def _tree(seed, steps=60, stride=20, **kw):
    prior, reward, target = tilted_example(1.0)
    den = prior.denoiser(VP())
    return DiffusionTree(den, reward, (2,), lam=1.0, steps=steps, stride=stride, seed=seed, dtype=F64, **kw), target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dts_reaches_the_tilted_target(seed):
    tree, target = _tree(seed, steps=100, stride=25)
    tree.grow(1024, batch=128)
    x = tree.sample(4000)
    assert float((x.mean(0) - target.mean()).abs().max()) < 0.06
    assert float((torch.cov(x.T) - target.covariance()).abs().max()) < 0.08
    assert float((mode_fractions(target, x) - target.weights).abs().max()) < 0.03


def test_dts_improves_with_rollouts_in_expectation():
    """Mean (over 4 seeds) L1 error of the mode weights falls as the same trees grow."""
    budgets = [32, 128, 512]
    errors = torch.zeros(len(budgets), dtype=F64)
    for seed in range(4):
        tree, target = _tree(10 + seed)
        for j, b in enumerate(budgets):
            tree.grow(b - len(tree.leaves), batch=32)
            errors[j] += (mode_fractions(target, tree.sample(2000)) - target.weights).abs().sum() / 4
    assert bool((errors[1:] < errors[:-1]).all()), errors.tolist()


def test_dts_star_is_anytime_and_beats_its_first_rollouts():
    prior, reward, _ = tilted_example(1.0)
    den = prior.denoiser(VP())
    tree = DiffusionTree(den, reward, (2,), lam=1.0, steps=30, stride=10, greedy=True, seed=0, dtype=F64)
    best = []
    for b in [8, 64, 256]:
        tree.grow(b - len(tree.leaves), batch=8)
        best.append(tree.best()[1])
    assert best[0] <= best[1] <= best[2] and best[2] > best[0]
    assert best[2] > -0.01  # the maximum reward is 0 (the measurement line)
    res = dts_star(den, reward, 64, (2,), steps=30, stride=10, seed=0, dtype=F64)
    assert res.x.shape == (1, 2) and float(res.reward) == pytest.approx(float(reward(res.x)))
    assert res.verifier_calls == 64


def test_dts_result_and_errors():
    prior, reward, _ = tilted_example(1.0)
    den = prior.denoiser(VP())
    res = dts(den, reward, 40, (2,), n_samples=5, steps=20, stride=5, seed=0, dtype=F64)
    assert res.x.shape == (5, 2) and torch.allclose(res.reward, reward(res.x))
    assert res.nfe > 0 and res.verifier_calls == 40
    with pytest.raises(ValueError, match="stochastic solver"):
        DiffusionTree(den, reward, (2,), solver="euler")
    with pytest.raises(ValueError, match="empty"):
        DiffusionTree(den, reward, (2,)).sample(1)


def test_dts_star_exploration_bonus():
    """DTS* adds ``explore * sqrt(log N(parent) / N(child))`` to the soft values: a huge
    constant spreads the visits over the root's children, zero is the pure argmax (one
    child takes nearly all); a negative constant is refused."""
    prior, reward, _ = tilted_example(1.0)
    den = prior.denoiser(VP())
    spread = {}
    for explore in (0.0, 1e6):
        tree = DiffusionTree(den, reward, (2,), lam=1.0, steps=20, stride=10, greedy=True, explore=explore,
                             seed=0, dtype=F64).grow(256, batch=16)
        root = tree.nodes[0]
        visits = [tree.nodes[c].visits for c in root.children]
        spread[explore] = max(visits) / sum(visits)
        b = tree.bonus(root)
        assert b.shape == (len(root.children),) and bool((b >= 0).all())
    assert spread[1e6] < 0.5 * spread[0.0], spread
    with pytest.raises(ValueError, match="explore"):
        DiffusionTree(den, reward, (2,), greedy=True, explore=-1.0)
