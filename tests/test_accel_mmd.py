"""MMD few-step finetuning (diffinfer.accel.mmd): the estimator against the closed form for
Gaussians, gradients through the sampler, and a finetuning run that reaches the parameter
whose few-step sampler draws the data law exactly."""
import math

import pytest
import torch
from torch import nn

import diffinfer as di
from diffinfer import metrics
from diffinfer.accel import mmd
from diffinfer.scaling.noise_opt import differentiable_sample

F64 = torch.float64


def test_unbiased_estimator_matches_the_gaussian_closed_form():
    """The mean of the U-statistic over many independent small sets equals the population
    MMD^2 of two Gaussians within 4 standard errors, for each bandwidth; the V-statistic,
    biased by O(1/n), is detectably off at the same sample size (the test has power)."""
    mu_a, mu_b = torch.tensor([0.0, 0.0], dtype=F64), torch.tensor([0.8, -0.3], dtype=F64)
    cov_a = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    cov_b = torch.tensor([[0.6, -0.1], [-0.1, 0.9]], dtype=F64)
    la, lb = torch.linalg.cholesky(cov_a), torch.linalg.cholesky(cov_b)
    g = torch.Generator().manual_seed(0)
    R, n, m = 1500, 6, 5
    xa = mu_a + torch.randn(R, n, 2, generator=g, dtype=F64) @ la.T
    xb = mu_b + torch.randn(R, m, 2, generator=g, dtype=F64) @ lb.T
    for h in (0.5, 1.5):
        exact = mmd.gaussian_mmd2(mu_a, cov_a, mu_b, cov_b, h)
        est = torch.tensor([float(mmd.mmd2(xa[r], xb[r], [h])) for r in range(R)], dtype=F64)
        se = float(est.std()) / math.sqrt(R)
        assert abs(float(est.mean()) - exact) < 4 * se, (h, float(est.mean()), exact, se)
        biased = torch.tensor([float(mmd.mmd2(xa[r], xb[r], [h], unbiased=False)) for r in range(100)], dtype=F64)
        assert float(biased.mean()) - exact > 4 * float(biased.std()) / math.sqrt(100)
    assert mmd.gaussian_mmd2(mu_a, cov_a, mu_a, cov_a, 1.0) == pytest.approx(0.0, abs=1e-15)


def test_paired_batches_stay_unbiased():
    """Rows generated with the labels of the data rows: both sets have the same law, so the
    paired estimator has mean 0 (within 4 standard errors); the plain cross term counts the
    dependent pairs (i, i) and is biased negative (detectably, at the same size)."""
    g = torch.Generator().manual_seed(5)
    R, n = 1500, 6
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=F64)
    labels = torch.randint(0, 2, (R, n), generator=g)
    x = means[labels] + 0.5 * torch.randn(R, n, 2, generator=g, dtype=F64)
    y = means[labels] + 0.5 * torch.randn(R, n, 2, generator=g, dtype=F64)
    paired = torch.tensor([float(mmd.mmd2(x[r], y[r], [1.0], paired=True)) for r in range(R)], dtype=F64)
    plain = torch.tensor([float(mmd.mmd2(x[r], y[r], [1.0])) for r in range(R)], dtype=F64)
    assert abs(float(paired.mean())) < 4 * float(paired.std()) / math.sqrt(R)
    assert float(plain.mean()) < -4 * float(plain.std()) / math.sqrt(R)
    with pytest.raises(ValueError, match="equal sizes"):
        mmd.mmd2(x[0], y[0, :5], [1.0], paired=True)


def test_estimator_agrees_with_metrics_mmd_and_sums_bandwidths():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 3, generator=g, dtype=F64), 0.5 + torch.randn(30, 3, generator=g, dtype=F64)
    for h in (0.3, 1.0, 4.0):
        assert float(mmd.mmd2(x, y, [h])) == pytest.approx(metrics.mmd_rbf(x, y, bandwidth=h), rel=1e-10, abs=1e-14)
    total = float(mmd.mmd2(x, y, [0.3, 1.0, 4.0]))
    assert total == pytest.approx(sum(float(mmd.mmd2(x, y, [h])) for h in (0.3, 1.0, 4.0)), rel=1e-12)
    hs = mmd.default_bandwidths(y)
    assert hs == pytest.approx([s * mmd.median_distance(y) for s in mmd.BANDWIDTH_SCALES])


class Scale(nn.Module):
    """``x0_hat = theta * x_t``: the sampler's output is Gaussian with a closed-form scale."""

    def __init__(self, theta: float):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(float(theta), dtype=F64))

    def forward(self, x, t):
        return self.theta * x


def _two_step_gain(theta: float, process, ts) -> float:
    """DDIM's 2-step endpoint from ``x_T`` is ``gain * x_T`` for the model above: step 1 to
    ``ts[1]`` with ``x0 = theta x``, ``eps = (x - alpha_T x0) / sigma_T``; step 2 ends at
    ``t = 0`` and returns ``x0 = theta x_1``."""
    a0, s0 = float(process.alpha(ts[0])), float(process.sigma(ts[0]))
    a1, s1 = float(process.alpha(ts[1])), float(process.sigma(ts[1]))
    return theta * (a1 * theta + s1 * (1 - a0 * theta) / s0)


def test_gradients_flow_through_the_sampler_to_the_weights():
    """d MMD^2 / d theta through the checkpointed 2-step sampler equals the central finite
    difference (float64), and equals the gradient without checkpointing."""
    process = di.VP()
    ts = torch.tensor([1.0, 0.4, 0.0], dtype=F64)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(64, 2, generator=g, dtype=F64)
    data = 0.5 * torch.randn(64, 2, generator=g, dtype=F64)

    def loss(theta, checkpoint=True):
        net = Scale(theta)
        den = di.Denoiser(net, process, "x0")
        x = differentiable_sample(den, x_T, "ddim", ts=ts, use_checkpoint=checkpoint)
        value = mmd.mmd2(x, data, [0.5, 1.0])
        return value, net

    value, net = loss(0.7)
    value.backward()
    grad = float(net.theta.grad)
    eps = 1e-6
    fd = (float(loss(0.7 + eps)[0].detach()) - float(loss(0.7 - eps)[0].detach())) / (2 * eps)
    assert grad == pytest.approx(fd, rel=1e-6)
    value2, net2 = loss(0.7, checkpoint=False)
    value2.backward()
    assert float(net2.theta.grad) == pytest.approx(grad, rel=1e-12)
    assert abs(grad) > 1e-3


def test_finetuning_reaches_the_law_matching_parameter_and_lowers_heldout_mmd():
    """Data ``N(0, s^2 I)``; the 2-step DDIM sampler of ``x0_hat = theta x`` draws
    ``N(0, (gain(theta) sigma_T)^2 I)``, which is the data law at the root ``theta*`` of
    ``|gain| sigma_T = s``. Finetuning from ``theta = 1`` must end at ``theta*`` within the
    noise of fitting a scale to ``batch`` rows of ``D`` entries (relative standard error
    ``1 / sqrt(2 batch D)``, 4 of them), and the MMD to held-out data from held-out noise
    falls to within the floor of two exact sets."""
    process, s, D, batch = di.VP(), 0.5, 2, 256
    ts = torch.tensor([1.0, 0.4, 0.0], dtype=F64)
    sigma_T = float(process.sigma(ts[0]))
    lo, hi = 0.0, 1.0  # gain(theta) sigma_T grows from 0 on [0, 1]: bisect for the root
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if abs(_two_step_gain(mid, process, ts)) * sigma_T < s else (lo, mid)
    theta_star = 0.5 * (lo + hi)
    assert abs(_two_step_gain(theta_star, process, ts)) * sigma_T == pytest.approx(s, rel=1e-9)

    den = di.Denoiser(Scale(1.0), process, "x0")

    def data(n, gen):
        return s * torch.randn(n, D, generator=gen, dtype=F64)

    res = mmd.mmd_finetune(den, data, (D,), solver="ddim", ts=ts, iterations=120, batch=batch, lr=0.02,
                           bandwidths=[0.25, 0.5, 1.0], seed=0, dtype=F64)
    theta = float(res.den.net.theta.detach())
    assert float(den.net.theta.detach()) == 1.0  # the input model is untouched
    rel = abs(abs(_two_step_gain(theta, process, ts)) * sigma_T / s - 1)
    assert rel < 4 / math.sqrt(2 * batch * D), (theta, theta_star, rel)

    g = torch.Generator().manual_seed(123)
    x_T = torch.randn(2000, D, generator=g, dtype=F64) * sigma_T
    held = data(2000, g)
    with torch.no_grad():
        before = float(mmd.mmd2(di.sample(den, x_T, solver="ddim", ts=ts).x, held, [0.5]))
        after = float(mmd.mmd2(di.sample(res.den, x_T, solver="ddim", ts=ts).x, held, [0.5]))
    floors = [abs(float(mmd.mmd2(data(2000, g), data(2000, g), [0.5]))) for _ in range(4)]
    assert before > 20 * max(floors)
    assert after < 4 * max(floors), (after, floors)
    assert res.losses[-1] < res.losses[0]


def test_finetuning_binds_the_data_batch_condition():
    """A callable data source returning ``(x, cond)`` conditions the generated batch on
    the same labels (the network sees them)."""
    seen = []

    class Cond(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones((), dtype=F64))

        def forward(self, x, t, label=None):
            seen.append(label.clone())
            return self.w * x

    den = di.Denoiser(Cond(), di.VP(), "x0")

    def data(n, gen):
        y = torch.randint(0, 3, (n,), generator=gen)
        return y[:, None].to(F64) + 0.1 * torch.randn(n, 1, generator=gen, dtype=F64), {"label": y}

    mmd.mmd_finetune(den, data, (1,), steps=2, iterations=1, batch=8, lr=1e-3, bandwidths=[1.0], dtype=F64)
    g = torch.Generator().manual_seed(0)
    expected = torch.randint(0, 3, (8,), generator=g)
    assert all(torch.equal(lab, expected) for lab in seen)


def test_clear_errors():
    den = di.Denoiser(Scale(1.0), di.VP(), "x0")
    data = torch.randn(10, 2, dtype=F64)
    with pytest.raises(ValueError, match="deterministic"):
        mmd.mmd_finetune(den, data, (2,), solver="ddpm", iterations=1)
    with pytest.raises(ValueError, match="positive"):
        mmd.mmd2(data, data, [0.0])
    with pytest.raises(ValueError, match="feature sizes"):
        mmd.mmd2(data, torch.randn(5, 3, dtype=F64), [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        mmd.mmd2(data[:1], data, [1.0])
    with pytest.raises(ValueError, match="unknown solver"):
        mmd.mmd_finetune(den, data, (2,), solver="nope", iterations=1)
