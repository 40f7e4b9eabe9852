"""Guidance wrappers against exact answers on Gaussian mixtures."""
import pytest
import torch

import diffinfer as di
from diffinfer.guidance import (ClassifierFreeGuidance, ClassifierGuidance, GradientGuidance, NoiseRangeExperts,
                                RewardGuidance, SteeredGuidance)
from diffinfer.inverse import DPS, Linear
from diffinfer.metrics import sliced_wasserstein
from diffinfer.toys import GaussianMixture, ring2d
from diffinfer.toys.posterior import NoisyLogLikelihood, linear_gaussian_posterior, mode_weight_error, moment_errors
from diffinfer.toys.tilted import LinearGaussianReward, tilt

F64 = torch.float64
N = 2000


def _problem():
    prior = ring2d()
    A = torch.tensor([[1.0, 0.0]], dtype=F64)
    y, s = torch.tensor([0.6], dtype=F64), 0.1
    return prior, A, y, s, linear_gaussian_posterior(prior, A, y, s)


@pytest.mark.parametrize("solver,steps", [("heun", 30), ("ddpm", 100)])
def test_exact_conditional_score_reproduces_the_exact_posterior(solver, steps):
    """Prior denoiser + exact grad log p(y|x_t) through GradientGuidance samples p(x0|y).

    Tolerances: mean within 0.03, covariance entries within 0.02, mode-weight total
    variation below 0.03, sliced Wasserstein within 0.02 of two exact sample sets' distance."""
    prior, A, y, s, post = _problem()
    p = di.VP()
    guided = GradientGuidance(prior.denoiser(p), NoisyLogLikelihood(prior, post, p), through_denoiser=False)
    x = di.sample(guided, shape=(N, 2), solver=solver, steps=steps, seed=0, dtype=F64).x
    ref, ref2 = post.sample(N, seed=1), post.sample(N, seed=2)
    mean_err, cov_err = moment_errors(x, post)
    print(f"\n{solver}: mean err {mean_err:.4f}, cov err {cov_err:.4f}, mode TV {mode_weight_error(x, post):.4f}, "
          f"SW {sliced_wasserstein(x, ref):.4f} (exact vs exact {sliced_wasserstein(ref2, ref):.4f})")
    assert mean_err < 0.03 and cov_err < 0.02
    assert mode_weight_error(x, post) < 0.03
    assert sliced_wasserstein(x, ref) < sliced_wasserstein(ref2, ref) + 0.02


def test_guided_prediction_is_consistent_and_adds_the_gradient_to_the_score():
    prior, A, y, s, post = _problem()
    p, t = di.VP(), 0.4
    den = prior.denoiser(p)
    guided = GradientGuidance(den, NoisyLogLikelihood(prior, post, p), scale=0.7)
    x = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    a, sig = p.alpha(torch.tensor(t)), p.sigma(torch.tensor(t))
    g = guided.predict(x, t)
    torch.testing.assert_close(a * g.x0 + sig * g.eps, x)  # still a point of the same path
    expected = prior.score(x, p, t) + 0.7 * (post.score(x, p, t) - prior.score(x, p, t))
    torch.testing.assert_close(guided.score(x, t), expected)
    assert den.nfe == guided.nfe == 2  # one call for predict, one for score


def test_guidance_interval_and_callable_scale():
    prior, A, y, s, post = _problem()
    p = di.VP()
    den = prior.denoiser(p)
    ll = NoisyLogLikelihood(prior, post, p)
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    inside = GradientGuidance(den, ll, interval=(0.2, 0.6))
    torch.testing.assert_close(inside.predict(x, 0.8).x0, den.predict(x, 0.8).x0)  # outside: the prior
    torch.testing.assert_close(inside.predict(x, 0.4).x0, GradientGuidance(den, ll).predict(x, 0.4).x0)
    half = GradientGuidance(den, ll, scale=lambda t: 0.5)
    torch.testing.assert_close(half.predict(x, 0.4).x0, GradientGuidance(den, ll, scale=0.5).predict(x, 0.4).x0)
    tb = torch.tensor([0.4, 0.8] * 4, dtype=F64)  # per-row times
    mixed = inside.predict(x, tb).x0
    torch.testing.assert_close(mixed[1::2], den.predict(x[1::2], 0.8).x0)
    torch.testing.assert_close(mixed[0::2], GradientGuidance(den, ll).predict(x[0::2], 0.4).x0)


def test_select_matches_rows_of_the_full_batch():
    prior, A, y, s, post = _problem()
    p = di.VP()
    ys = torch.linspace(-0.5, 0.5, 6, dtype=F64)[:, None]
    dps = DPS(prior.denoiser(p), Linear(A, noise_std=s), ys)
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    idx = torch.tensor([4, 1, 1])
    torch.testing.assert_close(dps.select(idx).predict(x[idx], 0.3).x0, dps.predict(x, 0.3).x0[idx])


def _separated():
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]], dtype=F64)
    covs = torch.stack([torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=F64), 0.2 * torch.eye(2, dtype=F64),
                        0.1 * torch.eye(2, dtype=F64)])
    return GaussianMixture(means, covs, torch.tensor([0.6, 0.3, 0.1], dtype=F64))


def test_classifier_guidance_with_the_exact_classifier_samples_one_component():
    """log p(k | x_t) of the mixture is an exact noise-conditional classifier: scale 1 gives N(m_k, C_k)."""
    gm, p = _separated(), di.VP()

    def classifier(x, t):  # logits [B, K]; t [B] (one value per call here)
        return torch.log(gm.responsibilities(x, p, t[0]))

    k = 2
    guided = ClassifierGuidance(gm.denoiser(p), classifier, labels=k)
    x = di.sample(guided, shape=(N, 2), solver="heun", steps=30, seed=0, dtype=F64).x
    target = GaussianMixture(gm.means[k:k + 1], gm.covs[k:k + 1])
    mean_err, cov_err = moment_errors(x, target)
    print(f"\nclassifier guidance: mean err {mean_err:.4f}, cov err {cov_err:.4f}")
    assert mean_err < 0.03 and cov_err < 0.02


def _conditional_toy(gm, p):
    """A class-conditional net: label k -> component k's exact denoiser, -1 -> the mixture."""
    parts = [GaussianMixture(gm.means[k:k + 1], gm.covs[k:k + 1]) for k in range(gm.n_components)]

    def net(x, t, label):
        out = gm.posterior_mean(x, p, t)
        for k, part in enumerate(parts):
            rows = label == k
            if bool(rows.any()):
                out[rows] = part.posterior_mean(x[rows], p, t[rows])
        return out

    return di.Denoiser(net, p, prediction="x0")


def test_classifier_free_guidance_scales_and_interval():
    gm, p = _separated(), di.VP()
    den = _conditional_toy(gm, p).bind(label=torch.full((N,), 1))
    x1 = di.sample(ClassifierFreeGuidance(den, 1.0, -1), shape=(N, 2), solver="heun", steps=30, seed=0,
                   dtype=F64).x
    target = GaussianMixture(gm.means[1:2], gm.covs[1:2])
    assert moment_errors(x1, target)[0] < 0.03
    x0 = di.sample(ClassifierFreeGuidance(den, 0.0, -1), shape=(N, 2), solver="heun", steps=30, seed=0, dtype=F64).x
    assert mode_weight_error(x0, gm) < 0.03  # w = 0: the unconditional model
    # an interval nobody enters is the conditional model, at one B-row call per evaluation
    xi = torch.randn(N, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    never = ClassifierFreeGuidance(den, 3.0, -1, interval=(0.0, 0.0))
    torch.testing.assert_close(never.predict(xi, 0.5).x0, den.predict(xi, 0.5).x0)
    always = ClassifierFreeGuidance(den, 3.0, -1, interval=(0.0, 1.0))
    torch.testing.assert_close(always.predict(xi, 0.5).x0, ClassifierFreeGuidance(den, 3.0, -1).predict(xi, 0.5).x0)
    # w > 1 pushes beyond the conditional: the mean moves away from the unconditional mean
    xw = di.sample(ClassifierFreeGuidance(den, 2.0, -1, interval=(0.2, 1.0)), shape=(N, 2), solver="heun",
                   steps=30, seed=0, dtype=F64).x
    assert (xw.mean(0) - gm.mean()).norm() > (x1.mean(0) - gm.mean()).norm()


def test_reward_guidance_moves_toward_the_exact_tilted_target():
    """Universal (forward) guidance with a Gaussian reward on x0_hat: closer to the exact
    tilted mixture than the prior; its remaining bias is printed."""
    prior, p = ring2d(), di.VP()
    reward = LinearGaussianReward(torch.tensor([[1.0, 1.0]], dtype=F64), torch.tensor([1.0], dtype=F64), 0.3)
    target = tilt(prior, reward)
    x = di.sample(RewardGuidance(prior.denoiser(p), reward, normalized=False), shape=(N, 2), solver="ddpm", steps=100, seed=0,
                  dtype=F64).x
    ref = target.sample(N, seed=1)
    sw, sw_prior = sliced_wasserstein(x, ref), sliced_wasserstein(prior.sample(N, seed=2), ref)
    print(f"\nuniversal guidance: SW {sw:.4f} (prior {sw_prior:.4f}), mode TV {mode_weight_error(x, target):.4f}")
    assert sw < 0.5 * sw_prior


def test_steered_guidance_with_a_linear_inverse_model_is_dps():
    """Loss guidance through an inverse model F = A with MSE and scale 1/(2 s^2) is Gaussian DPS."""
    prior, A, y, s, post = _problem()
    p = di.VP()
    den = prior.denoiser(p)
    yb = y.expand(16, 1)
    steered = SteeredGuidance(den, lambda x0: x0 @ A.T, yb, scale=0.5 / s ** 2)
    dps = DPS(den, Linear(A, noise_std=s), yb, likelihood="gaussian", normalized=False)
    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    for t in (0.2, 0.7):
        torch.testing.assert_close(steered.predict(x, t).x0, dps.predict(x, t).x0)
    # and it lowers the inverse model's loss on the samples
    xs = di.sample(steered, shape=(16, 2), solver="heun", steps=20, seed=0, dtype=F64).x
    xu = di.sample(den, shape=(16, 2), solver="heun", steps=20, seed=0, dtype=F64).x
    assert ((xs @ A.T - yb) ** 2).mean() < 0.2 * ((xu @ A.T - yb) ** 2).mean()


def test_noise_range_experts_dispatch_by_t():
    prior, A, y, s, post = _problem()
    p = di.VP()
    exact = NoisyLogLikelihood(prior, post, p)
    seen = {"low": [], "high": []}

    def expert(name):
        def f(x, t, pred):
            seen[name].append(torch.as_tensor(t).reshape(-1).clone())
            return exact(x, t, pred)
        return f

    experts = NoiseRangeExperts([(0.5, 1.0, expert("high")), (0.0, 0.5, expert("low"))])
    den = prior.denoiser(p)
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    tb = torch.tensor([0.1, 0.6, 0.5, 1.0, 0.3, 0.49], dtype=F64)
    torch.testing.assert_close(GradientGuidance(den, experts).predict(x, tb).x0,
                               GradientGuidance(den, exact).predict(x, tb).x0)
    assert bool((torch.cat(seen["low"]) < 0.5).all()) and bool((torch.cat(seen["high"]) >= 0.5).all())
    with pytest.raises(ValueError, match="no expert owns"):
        NoiseRangeExperts([(0.0, 0.5, exact)])(x, 0.7)
    with pytest.raises(ValueError, match="overlap"):
        NoiseRangeExperts([(0.0, 0.6, exact), (0.5, 1.0, exact)])


def test_bad_inputs_raise_clearly():
    prior, A, y, s, post = _problem()
    den = prior.denoiser(di.VP())
    with pytest.raises(ValueError, match="NaN"):
        GradientGuidance(den, lambda x, t, p: x.sum(1), scale=float("nan"))
    with pytest.raises(ValueError, match="interval"):
        GradientGuidance(den, lambda x, t, p: x.sum(1), interval=(0.8, 0.2))
    with pytest.raises(ValueError, match=r"\[B\]"):
        GradientGuidance(den, lambda x, t, p: x.sum()).predict(torch.zeros(3, 2, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="NaN or Inf"):
        GradientGuidance(den, lambda x, t, p: x.sum(1) * float("nan")).predict(torch.zeros(3, 2, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="labels"):
        ClassifierGuidance(den, lambda x, t: torch.zeros(x.shape[0], 3), labels=5).predict(
            torch.zeros(2, 2, dtype=F64), 0.5)


def test_universal_backward_guidance_and_self_recurrence():
    """Backward guidance raises the reward of x0_hat and keeps x = a x0 + s eps; with
    self-recurrence (RePaint driver, jump 1) it still lands closer to the tilted target."""
    from diffinfer.inverse import sample_with_resampling
    prior, p = ring2d(), di.VP()
    reward = LinearGaussianReward(torch.tensor([[1.0, 1.0]], dtype=F64), torch.tensor([1.0], dtype=F64), 0.3)
    den = prior.denoiser(p)
    fwd = RewardGuidance(den, reward, scale=0.0)
    bwd = RewardGuidance(den, reward, scale=0.0, backward_steps=5, backward_lr=0.01)
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(6))
    t = 0.3
    pf, pb = fwd.predict(x, t), bwd.predict(x, t)
    assert bool((reward(pb.x0) >= reward(pf.x0) - 1e-12).all()) and float((reward(pb.x0) - reward(pf.x0)).mean()) > 0
    a, s = p.alpha(torch.tensor(t)), p.sigma(torch.tensor(t))
    torch.testing.assert_close(a * pb.x0 + s * pb.eps, x)
    target = tilt(prior, reward)
    ref = target.sample(500, seed=1)
    xs = sample_with_resampling(RewardGuidance(den, reward, normalized=False), (500, 2), solver="ddpm", steps=50, seed=0,
                                resample=2, jump=1, dtype=F64).x
    sw = sliced_wasserstein(xs, ref)
    print(f"\nuniversal guidance + self-recurrence (k=2): SW {sw:.4f}")
    assert sw < 0.5 * sliced_wasserstein(prior.sample(500, seed=2), ref)
