"""Training losses against closed forms, EMA algebra, seeding and exact resume."""
import math

import pytest
import torch
from torch import nn

from diffinfer import EDM, VE, VP, Denoiser, RectifiedFlow
from diffinfer.denoiser import PREDICTIONS
from diffinfer.toys import GaussianMixture
from diffinfer.train import (EMA, TrainConfig, autoregressive_loss, denoising_loss, fit, mask_tokens,
                             masked_diffusion_loss)

torch.set_num_threads(1)
F64 = torch.float64


def _x0_coefficient(prediction, a, s, da, ds):
    """Each target is ``c_x x_t + c_0 x0`` at fixed ``t``; returns ``c_0``."""
    return {"eps": -a / s, "x0": 1.0, "v": -(a * a + s * s) / s, "score": a / (s * s),
            "velocity": da - ds * a / s}[prediction]


@pytest.mark.parametrize("process", [VP("linear"), VP("cosine"), VE(), EDM(), RectifiedFlow()], ids=repr)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_denoising_loss_of_exact_denoiser_is_posterior_variance(process, prediction):
    """For x0 ~ N(mu, v I) the ideal network's loss is ``c_0^2 Var(x0 | x_t)`` with
    ``Var(x0 | x_t) = v s^2 / (a^2 v + s^2)`` per dimension (Gaussian conjugacy)."""
    mu, v, D, N = torch.tensor([0.5, -1.0, 2.0], dtype=F64), 0.7, 3, 40_000
    gm = GaussianMixture(mu[None], v * torch.eye(D, dtype=F64)[None])
    exact = gm.denoiser(process)
    net = lambda x, t: exact.as_prediction(x, t, prediction)  # noqa: E731  the ideal net of this type
    den = Denoiser(net, process, prediction)
    t0 = 0.37
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(N, seed=1)
    loss = float(denoising_loss(den, x0, t=torch.full((N,), t0, dtype=F64), generator=g))
    a, s = float(process.alpha(t0)), float(process.sigma(t0))
    da, ds = float(process.d_alpha(t0)), float(process.d_sigma(t0))
    closed = _x0_coefficient(prediction, a, s, da, ds) ** 2 * v * s * s / (a * a * v + s * s)
    # per-sample loss is (closed) * chi^2_D / D: relative standard error sqrt(2 / (N D)) ~ 0.4%
    assert loss == pytest.approx(closed, rel=0.02)


def test_denoising_loss_wrong_model_is_larger_and_weights_apply():
    process = VP()
    gm = GaussianMixture(torch.zeros(1, 2, dtype=F64), 0.5 * torch.eye(2, dtype=F64)[None])
    N = 50_000
    x0 = gm.sample(N, seed=3)
    t = torch.full((N,), 0.5, dtype=F64)  # one time: the exact mixture denoiser is batched per time
    exact = gm.denoiser(process)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    good = float(denoising_loss(exact, x0, t=t, generator=g()))
    biased = Denoiser(lambda x, t: exact.x0(x, t) + 0.1, process, "x0")
    # a constant bias b adds b^2 per dimension (plus a cross term of mean zero, ~3e-4 here)
    assert float(denoising_loss(biased, x0, t=t, generator=g())) == pytest.approx(good + 0.01, abs=1.5e-3)
    per = denoising_loss(exact, x0, t=t, generator=g(), reduce=False)
    weighted = denoising_loss(exact, x0, t=t, generator=g(), weight=lambda t: 2.0 * torch.ones_like(t))
    assert per.shape == (N,) and float(weighted) == pytest.approx(2.0 * float(per.mean()), rel=1e-12)


def test_denoising_loss_bad_input():
    den = Denoiser(lambda x, t: x, VP(), "x0")
    with pytest.raises(ValueError, match="NaN"):
        denoising_loss(den, torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match=r"\[B\]"):
        denoising_loss(den, torch.zeros(3, 2), t=torch.rand(2))
    with pytest.raises(TypeError):
        denoising_loss(lambda x, t: x, torch.zeros(3, 2))


class IIDModel(nn.Module):
    """The exact model of i.i.d. tokens with law ``p``: every position's logits are ``log p``."""

    def __init__(self, p):
        super().__init__()
        self.logp = torch.log(p)

    def forward(self, tokens):
        return self.logp.expand(*tokens.shape, -1).clone()


def test_masked_diffusion_loss_is_entropy_for_iid_tokens():
    """For i.i.d. tokens the MDLM ELBO is tight: ``E_t[(1/t) E[#masked] H] / L = H(p)``."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])  # the last id is the mask (never data)
    g = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(p, 20_000 * 32, replacement=True, generator=g).view(20_000, 32)
    model = IIDModel(p.clamp(min=1e-30))
    loss = float(masked_diffusion_loss(model, tokens, mask_id=4, generator=g))
    entropy = float(-(p[:4] * p[:4].log()).sum())
    assert loss == pytest.approx(entropy, rel=0.03)
    stratified = float(masked_diffusion_loss(model, tokens, mask_id=4, generator=g, stratified=True))
    assert stratified == pytest.approx(entropy, rel=0.03)  # MDLM's low-discrepancy times: same expectation
    # the AR cross-entropy of the same exact model is the entropy too
    assert float(autoregressive_loss(model, tokens)) == pytest.approx(entropy, rel=0.01)


def test_masked_diffusion_loss_weighting_and_masking():
    """At fixed ``t`` the loss is ``(1/t) * (#masked * CE) / (B L)``; masking hits a fraction ``t``."""
    tokens = torch.zeros(4000, 50, dtype=torch.int64)
    t = torch.full((4000,), 0.3)
    g = torch.Generator().manual_seed(1)
    noisy, mask = mask_tokens(tokens, t, 9, torch.Generator().manual_seed(1))
    assert torch.equal(noisy == 9, mask) and abs(float(mask.float().mean()) - 0.3) < 0.005
    p = torch.tensor([0.25] * 4 + [0.0] * 6).clamp(min=1e-30)
    loss = float(masked_diffusion_loss(IIDModel(p), tokens, 9, t=t, generator=g))
    assert loss == pytest.approx(float(mask.float().mean()) / 0.3 * math.log(4), rel=1e-5)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        masked_diffusion_loss(IIDModel(p), tokens[0], 9)


def test_ema_closed_form():
    """With the weights held at ``w``, ``n`` updates give ``d^n w0 + (1 - d^n) w``."""
    net = nn.Linear(3, 2).double()
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(2.0)
    for _ in range(7):
        ema.update(net)
    for k, v in ema.shadow.items():
        assert torch.allclose(v, 0.9 ** 7 * w0[k] + (1 - 0.9 ** 7) * 2.0, atol=1e-12)
    copy = nn.Linear(3, 2).double()
    ema.copy_to(copy)
    assert torch.equal(copy.weight, ema.shadow["weight"])
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)


def _toy_training():
    torch.manual_seed(123)
    model = nn.ModuleDict({"net": nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 2))})
    gm = GaussianMixture(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), 0.1 * torch.eye(2).expand(2, 2, 2))
    data = gm.sample(256, seed=0).float()

    def loss_fn(m, gen):
        idx = torch.randint(0, 256, (32,), generator=gen)
        net = lambda x, t: m["net"](torch.cat([x, t[:, None]], 1))  # noqa: E731
        return denoising_loss(Denoiser(net, VP(), "eps"), data[idx], generator=gen)

    return model, loss_fn


def test_fit_resume_is_bitwise_identical(tmp_path):
    cfg = TrainConfig(steps=30, lr=1e-2, warmup=5, ema_decay=0.9, seed=4, checkpoint_every=0)
    model, loss_fn = _toy_training()
    full = fit(model, loss_fn, cfg, checkpoint=None, progress=False)

    model2, loss_fn2 = _toy_training()
    part = fit(model2, loss_fn2, cfg, checkpoint=tmp_path / "ck.pt", progress=False, stop_at=13)
    assert part.step == 13
    model3, loss_fn3 = _toy_training()  # a fresh process would rebuild everything
    resumed = fit(model3, loss_fn3, cfg, checkpoint=tmp_path / "ck.pt", progress=False)
    assert resumed.step == 30 and resumed.losses == full.losses
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for k in full.ema.shadow:
        assert torch.equal(full.ema.shadow[k], resumed.ema.shadow[k])


def _ema_probe(calls):
    """An ``evaluate`` that records what it saw: the EMA weights' sum (a function of the
    step's weights only) and whether it ran in eval mode without gradients."""
    def evaluate(m):
        calls.append((m.training, torch.is_grad_enabled()))
        return {"weight_sum": float(sum(p.double().sum() for p in m.parameters()))}
    return evaluate


def test_fit_history_is_the_ema_curve_and_survives_resume(tmp_path):
    cfg = TrainConfig(steps=30, lr=1e-2, warmup=5, ema_decay=0.9, seed=4, checkpoint_every=0, eval_every=10)
    calls = []
    model, loss_fn = _toy_training()
    full = fit(model, loss_fn, cfg, progress=False, evaluate=_ema_probe(calls))
    assert [h["step"] for h in full.history] == [0, 10, 20, 30]
    assert calls and all(not training and not grad for training, grad in calls)
    # the last point is the final EMA weights, not the raw ones
    ema_sum = float(sum(v.double().sum() for k, v in full.ema.shadow.items()))
    assert full.history[-1]["weight_sum"] == pytest.approx(ema_sum, rel=1e-12)
    raw_sum = float(sum(p.double().sum() for p in full.model.parameters()))
    assert abs(raw_sum - ema_sum) > 1e-6
    seconds = [h["train_seconds"] for h in full.history]
    assert seconds[0] == 0.0 and all(b >= a for a, b in zip(seconds, seconds[1:]))
    assert round(full.train_seconds, 3) >= seconds[-1] > 0

    model2, loss_fn2 = _toy_training()
    fit(model2, loss_fn2, cfg, checkpoint=tmp_path / "ck.pt", progress=False, stop_at=13,
        evaluate=_ema_probe([]))
    model3, loss_fn3 = _toy_training()
    resumed = fit(model3, loss_fn3, cfg, checkpoint=tmp_path / "ck.pt", progress=False,
                  evaluate=_ema_probe([]))
    assert resumed.losses == full.losses  # evaluating does not disturb the run
    assert [h["step"] for h in resumed.history] == [0, 10, 20, 30]
    assert [h["weight_sum"] for h in resumed.history] == [h["weight_sum"] for h in full.history]
    assert resumed.train_seconds > resumed.history[1]["train_seconds"]  # time carried over the resume


def test_fit_rejects_a_non_finite_metric():
    cfg = TrainConfig(steps=4, lr=1e-2, warmup=1, seed=0, checkpoint_every=0, eval_every=2)
    with pytest.raises(FloatingPointError, match="step 0"):
        fit(*_toy_training(), cfg, progress=False, evaluate=lambda m: {"elbo": float("nan")})


def test_fit_is_seeded_and_learns():
    cfg = TrainConfig(steps=200, lr=1e-2, warmup=10, seed=0, checkpoint_every=0)
    a = fit(*_toy_training(), cfg, progress=False)
    b = fit(*_toy_training(), cfg, progress=False)
    assert a.losses == b.losses
    cfg.seed = 1
    c = fit(*_toy_training(), cfg, progress=False)
    assert c.losses != a.losses
    assert sum(a.losses[-20:]) / 20 < 0.8 * sum(a.losses[:20]) / 20


def test_fit_stops_on_nan():
    model = nn.ModuleDict({"net": nn.Linear(1, 1)})
    with pytest.raises(FloatingPointError, match="step 0"):
        fit(model, lambda m, g: m["net"].weight.sum() * float("nan"), TrainConfig(steps=3), progress=False)
