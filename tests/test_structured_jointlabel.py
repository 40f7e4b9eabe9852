"""Joint data-label diffusion (diffinfer.jointlabel) against the exact joint denoiser of a
labelled Gaussian mixture (diffinfer.toys.joint_label): classification by inpainting the label
is the Bayes classifier, generation by inpainting the data is the class-conditional law."""
import math

import pytest
import torch

import diffinfer as di
from diffinfer import jointlabel as jl
from diffinfer.nets.joint_mlp import JointMLP
from diffinfer.toys.joint_label import JointLabelMixture, random_labelled_mixture
from diffinfer.toys.random_problem import floors, score
from diffinfer.train import TrainConfig, fit

torch.set_num_threads(1)
F64 = torch.float64


labelled_mixture = random_labelled_mixture


def exact_joint(toy: JointLabelMixture, process=None) -> jl.JointDenoiser:
    process = process or di.RectifiedFlow()
    return jl.JointDenoiser(toy.joint_net(process), process, toy.num_classes, prediction="x0")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_probabilities_are_the_bayes_posterior(seed):
    """With alpha(t_max) = 0 the label block's denoiser given clean x is E[onehot(y) | x] = p(y | x)."""
    toy = labelled_mixture(seed)
    x, _ = toy.sample(400, seed=seed + 10)
    p = jl.label_probabilities(exact_joint(toy), x)
    bayes = toy.bayes_posterior(x)
    assert (p - bayes).abs().max() < 1e-10
    assert torch.equal(jl.classify(exact_joint(toy), x), bayes.argmax(1))


def _z(freq: torch.Tensor, p: torch.Tensor, n: int) -> float:
    """The largest binomial z-score ``|freq - p| / sqrt((p (1 - p) + 1/n) / n)`` over entries."""
    return float(((freq - p).abs() / ((p * (1 - p) + 1.0 / n) / n).sqrt()).max())


@pytest.mark.parametrize("seed", [0, 3])
def test_label_inpainting_samples_the_bayes_posterior(seed):
    """Classification as inpainting: solving the label block alone (data held clean) draws
    classes with the Bayes probabilities p(y | x), within the floor of exact categorical draws."""
    toy = labelled_mixture(seed)
    x, _ = toy.sample(4, seed=seed + 20)
    n = 1500
    res = jl.inpaint_label(exact_joint(toy), x.repeat_interleave(n, 0), solver="dpmpp-2m", steps=20, seed=seed)
    assert res.x.shape == (4 * n, toy.num_classes)
    freq = torch.nn.functional.one_hot(res.x.argmax(1), toy.num_classes).to(F64).reshape(4, n, -1).mean(1)
    bayes = toy.bayes_posterior(x)
    # the floor: n exact categorical draws per row give binomial errors; 4 standard deviations
    # (two-sided p = 6e-5 per entry, ~1e-3 over the 12 entries) bound them
    assert _z(freq, bayes, n) <= 4.0, (freq, bayes)
    # the sampled label itself lands on a one-hot vertex (the label block's law is discrete)
    assert float((res.x - torch.nn.functional.one_hot(res.x.argmax(1), toy.num_classes)).abs().max()) < 1e-3
    # decisions agree wherever the Bayes margin exceeds the sampling spread
    top2 = bayes.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 6 * math.sqrt(0.25 / n)
    assert torch.equal(freq.argmax(1)[clear], bayes.argmax(1)[clear])


@pytest.mark.parametrize("seed,label", [(0, 0), (1, 2)])
def test_data_inpainting_samples_the_class_conditional(seed, label):
    """Generation as inpainting: solving the data block with a clean one-hot label gives
    p(x | y), a mixture of that class's components, within the two-exact-sets floor."""
    toy = labelled_mixture(seed)
    n = 2000
    res = jl.inpaint_data(exact_joint(toy), torch.full((n,), label), (n, toy.dim), solver="dpmpp-2m",
                          steps=20, seed=seed, dtype=F64)
    target = toy.class_conditional(label)
    got, floor = score(res.x, target), floors(target, n)
    for name in ("sw", "mean", "cov", "mass"):
        assert got[name] <= 1.5 * floor[name], (name, got, floor)
    # and not the other classes' law: the unconditional mixture is far outside that floor
    other = score(toy.gm.sample(n, seed=5), target)
    assert other["mean"] > 3 * floor["mean"] or other["cov"] > 3 * floor["cov"]


def test_tiny_label_std_is_the_degenerate_limit():
    """label_std -> 0 joins the exact one-hot case continuously (both block directions)."""
    toy0 = labelled_mixture(4)
    toy1 = JointLabelMixture(toy0.gm, toy0.labels, label_std=1e-6)
    x, y = toy0.sample(50, seed=1)
    l = torch.nn.functional.one_hot(y, toy0.num_classes).to(F64)
    p = di.RectifiedFlow()
    g = torch.Generator().manual_seed(0)
    for tx, tl in [(0.0, 0.6), (0.4, 0.0), (0.3, 0.7)]:
        xt = (1 - tx) * x + tx * torch.randn(x.shape, dtype=F64, generator=g)
        lt = (1 - tl) * l + tl * torch.randn(l.shape, dtype=F64, generator=g)
        a = toy0.posterior_mean(xt, lt, tx, tl, p)
        b = toy1.posterior_mean(xt, lt, tx, tl, p)
        assert (a[0] - b[0]).abs().max() < 1e-6 and (a[1] - b[1]).abs().max() < 1e-6


def test_joint_model_trains_to_the_bayes_decisions():
    """A tiny JointMLP trained with joint_denoising_loss (per-block times) classifies by label
    inpainting like the Bayes classifier (a smoke check of the training wiring)."""
    toy = JointLabelMixture(di.toys.ring2d(6, 1.0, 0.3), [0, 1, 2, 0, 1, 2])
    proc = di.RectifiedFlow()
    torch.manual_seed(0)
    net = JointMLP((2,), 3, hidden=64, depth=2)
    joint = jl.JointDenoiser(net, proc, 3, prediction="velocity", check=False)
    xs, ys = toy.sample(8000, seed=0)
    xs = xs.float()

    def loss_fn(model, gen):
        idx = torch.randint(0, len(xs), (256,), generator=gen)
        return jl.joint_denoising_loss(joint, xs[idx], ys[idx], gen)

    res = fit(net, loss_fn, TrainConfig(steps=150, lr=5e-3, warmup=20, ema_decay=0.9, checkpoint_every=0),
              progress=False)
    x, y = toy.sample(1000, seed=7)
    with torch.no_grad():
        p = jl.label_probabilities(jl.JointDenoiser(res.ema_model(), proc, 3, "velocity"), x.float())
    bayes = toy.bayes_posterior(x)
    agree = float((p.argmax(1) == bayes.argmax(1)).float().mean())
    assert agree > 0.85, agree  # 0.93 measured; the Bayes rule itself is the ceiling
    assert res.losses[-1] < res.losses[0]


def test_views_share_the_counter_and_select_rows():
    toy = labelled_mixture(0)
    joint = exact_joint(toy)
    x, y = toy.sample(6, seed=0)
    view = jl.LabelGivenData(joint, x)
    l = torch.randn(6, toy.num_classes, dtype=F64, generator=torch.Generator().manual_seed(1))
    full = view.predict(l, 0.5).x0
    part = view.select(torch.tensor([4, 1])).predict(l[[4, 1]], 0.5).x0
    assert torch.allclose(full[[4, 1]], part)
    assert joint.nfe == 2
    tied = jl.TiedJoint(joint, (toy.dim,))
    z = torch.cat([x, l], 1)
    pz = tied.predict(z, 0.3)
    px, pl = joint.predict(x, l, 0.3, 0.3)
    assert torch.equal(pz.x0, torch.cat([px.x0, pl.x0], 1))


def test_bad_inputs():
    toy = labelled_mixture(0)
    joint = exact_joint(toy)
    x, _ = toy.sample(3, seed=0)
    with pytest.raises(ValueError, match="labels must be"):
        joint.predict(x, torch.zeros(3, 7, dtype=F64), 0.5, 0.5)
    with pytest.raises(ValueError, match="lie in"):
        jl.inpaint_data(joint, torch.tensor([0, 1, 9]), (3, toy.dim))
    with pytest.raises(ValueError, match="valid: mean, sample"):
        jl.classify(joint, x, method="vote")
    with pytest.raises(ValueError, match="2 labels for a batch of 3"):
        jl.inpaint_data(joint, torch.tensor([0, 1]), (3, toy.dim))
    nan = jl.JointDenoiser(lambda x, l, tx, tl: (x * math.nan, l), di.RectifiedFlow(), 3)
    with pytest.raises(FloatingPointError, match="NaN"):
        jl.label_probabilities(nan, x)
    with pytest.raises(ValueError, match="num_classes"):
        JointLabelMixture(toy.gm, toy.labels, num_classes=2)


def test_cli_demo(tmp_path, capsys):
    """The demo loads the bundled joint digits model, classifies the held-out digits by label
    inpainting beside digits-classifier and draws class-conditional digits."""
    from diffinfer.cli import main
    png = tmp_path / "jl.png"
    assert main(["structured", "jointlabel", "--sample-steps", "5", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "label inpainting accuracy" in out and "digits-classifier" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in (["--data", "nope"], ["--sample-steps", "0"]):
        try:  # argparse rejects a value by SystemExit(2), a later check returns 2
            code = main(["structured", "jointlabel", *bad])
        except SystemExit as e:
            code = e.code
        assert code == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err


def test_bundled_joint_model_classifies_digits():
    """The bundled checkpoint loads strictly and its label inpainting is far above chance on
    the held-out digits (0.1): a guard against a broken or mismatched checkpoint."""
    from diffinfer.demos.jointlabel import load_digits_joint
    from diffinfer.zoo.data import digits
    from diffinfer.zoo.recipes import digits_classifier_split
    joint, config = load_digits_joint()
    x, y = digits()
    _, held = digits_classifier_split()
    with torch.no_grad():
        acc = float((jl.classify(joint, x[held]) == y[held]).float().mean())
    assert acc > 0.85, acc
