"""Diffusion classifier against the exact Bayes classifier; denoised-smoothing certificates."""

import pytest
import torch

from diffinfer import VP
from diffinfer.classify import ABSTAIN, DenoisedSmoothing, DiffusionClassifier, clopper_pearson_lower
from diffinfer.toys.gaussian_mixture import GaussianMixture

F64 = torch.float64
P = VP()
MEANS = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]], dtype=F64)
COV = 0.5 * torch.eye(2, dtype=F64)
LOG_PRIOR = torch.log(torch.tensor([0.3, 0.3, 0.4], dtype=F64))


def _classes():
    return [GaussianMixture(MEANS[c:c + 1], COV.unsqueeze(0)) for c in range(3)]


def _data(n, seed):
    x = GaussianMixture(MEANS, COV.expand(3, 2, 2), LOG_PRIOR.exp()).sample(n, seed=seed)
    bayes = (torch.stack([c.log_prob(x) for c in _classes()], 1) + LOG_PRIOR).argmax(1)
    return x, bayes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_the_exact_bayes_classifier(seed):
    """Overlapping classes (so the task is not trivial): >= 90% agreement with 64 shared pairs."""
    clf = DiffusionClassifier([c.denoiser(P) for c in _classes()], log_prior=LOG_PRIOR)
    x, bayes = _data(300, seed)
    res = clf.classify(x, n_pairs=64, seed=seed)
    assert float((res.labels == bayes).double().mean()) >= 0.9
    assert bool((bayes != torch.cdist(x, MEANS).argmin(1)).any())  # the class prior matters somewhere


def test_adaptive_pruning_spends_fewer_pairs_and_keeps_accuracy():
    clf = DiffusionClassifier(lambda c: _classes()[c].denoiser(P), n_classes=3, log_prior=LOG_PRIOR)
    x, bayes = _data(300, 5)
    full = clf.classify(x, n_pairs=128, seed=0)
    pruned = clf.classify(x, prune=[(16, 2), (112, 1)], seed=0)
    assert int(pruned.pairs.sum()) < 0.75 * int(full.pairs.sum())
    assert float((pruned.labels == bayes).double().mean()) >= 0.9
    assert bool(torch.isinf(pruned.scores).sum(1).eq(2).all())  # one class survives per row


def test_reported_nfe_is_the_number_of_model_calls():
    """Distinct denoisers are summed, a shared counter is read once."""
    x, _ = _data(50, 3)
    dens = [c.denoiser(P) for c in _classes()]
    res = DiffusionClassifier(dens, log_prior=LOG_PRIOR).classify(x, prune=[(4, 2), (6, 1)], seed=0)
    assert res.nfe == sum(d.nfe for d in dens) > dens[0].nfe
    one = _classes()[0].denoiser(P)
    res = DiffusionClassifier([one] * 3).classify(x, n_pairs=5, seed=0)
    assert res.nfe == one.nfe == 3 * 5


def test_noise_level_of_denoised_smoothing():
    den = _classes()[0].denoiser(P)
    sm = DenoisedSmoothing(den, lambda z: z, sigma=0.5)
    assert float(P.sigma(sm.t) / P.alpha(sm.t)) == pytest.approx(0.5, rel=1e-6)


def test_certified_radius_closed_form_and_correct_labels():
    """A constant classifier gives p_A lower bound alpha**(1/n): radius sigma * Phi^-1 of it."""
    from scipy.stats import norm
    mix = GaussianMixture(MEANS, COV.expand(3, 2, 2) * 0.05)
    const = DenoisedSmoothing(mix.denoiser(P), lambda z: torch.nn.functional.one_hot(torch.zeros(z.shape[0], dtype=torch.long), 3).double(), 0.25)
    cert = const.certify(torch.zeros(1, 2, dtype=F64), n0=10, n=200, alpha=0.01, n_classes=3)
    assert clopper_pearson_lower(200, 200, 0.01) == pytest.approx(0.01 ** (1 / 200))
    assert float(cert.radius[0]) == pytest.approx(0.25 * norm.ppf(0.01 ** (1 / 200)))
    nearest = lambda z: -torch.cdist(z.double(), MEANS)  # noqa: E731
    sm = DenoisedSmoothing(mix.denoiser(P), nearest, 0.25)
    cert = sm.certify(MEANS, n0=20, n=200, alpha=0.01, n_classes=3)
    assert cert.labels.tolist() == [0, 1, 2] and bool((cert.radius > 0.25).all())
    far = sm.certify(torch.tensor([[0.0, 0.55]], dtype=F64), n0=20, n=100, alpha=0.01, n_classes=3)
    assert int(far.labels[0]) == ABSTAIN or float(far.radius[0]) < float(cert.radius.min())


def test_errors():
    with pytest.raises(ValueError, match="n_classes"):
        DiffusionClassifier(lambda c: None)
    with pytest.raises(ValueError, match="sigma"):
        DenoisedSmoothing(_classes()[0].denoiser(P), lambda z: z, 0.0)
    with pytest.raises(ValueError, match="log_prior"):
        DiffusionClassifier([c.denoiser(P) for c in _classes()], log_prior=[0.0])


def _zoo_or_skip(*names):
    from diffinfer import zoo
    try:
        return [zoo.load(n) for n in names]
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"bundled checkpoints {names} not available: {e}")


def test_digits_diffusion_classifier_beats_chance_by_far():
    base, = _zoo_or_skip("digits")
    from diffinfer.zoo.data import digits
    x, y = digits()
    x, y = x[:40], y[:40]
    clf = DiffusionClassifier(lambda c: base.bind(label=torch.full((x.shape[0],), c, dtype=torch.int64)), n_classes=10)
    with torch.no_grad():
        res = clf.classify(x, prune=[(8, 4), (24, 1)], seed=0)
    assert float((res.labels == y).double().mean()) >= 0.6  # chance is 0.1
    assert int(res.pairs.sum()) == 40 * (10 * 8 + 4 * 24)


def test_digits_denoised_smoothing_certifies():
    base, clf = _zoo_or_skip("digits", "digits-classifier")
    from diffinfer.zoo.data import digits
    x, y = digits()
    sm = DenoisedSmoothing(base, clf.clean, sigma=0.25)  # unbound: the null class
    cert = sm.certify(x[:8], n0=20, n=100, alpha=0.01, n_classes=10)
    ok = cert.labels != ABSTAIN
    assert bool((cert.radius[ok] > 0).all()) and bool((cert.radius[~ok] == 0).all())
    assert int(ok.sum()) >= 6, cert.labels.tolist()  # abstaining on every input must fail
    assert float((cert.labels[ok] == y[:8][ok]).double().mean()) >= 0.75
