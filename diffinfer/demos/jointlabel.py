"""``diffinfer structured jointlabel``: one model diffuses (data, one-hot label); classifying is
inpainting the label, generating is inpainting the data (``diffinfer.jointlabel``).

``--data toy``: the exact joint denoiser of a labelled Gaussian mixture; label inpainting gives
the Bayes posterior, data inpainting the class-conditional law (seconds).
``--data digits`` (default): the bundled joint MLP (``zoo/weights/digits-joint.safetensors``,
trained on 90% of the digits; ``--train`` retrains one for ``--steps`` instead, minutes) classifies
the held-out 10% by label inpainting beside the bundled ``digits-classifier`` and draws
class-conditional digits by data inpainting (seconds)."""
from __future__ import annotations

import time

import torch

from ..cli.common import int_in, progress_enabled

HELP = "joint data-label diffusion: classify by inpainting the label, generate by inpainting the data"


def add_arguments(parser) -> None:
    parser.add_argument("--data", choices=("digits", "toy"), default="digits")
    parser.add_argument("--train", action="store_true", help="train a joint digits model instead of loading the bundled one")
    parser.add_argument("--steps", type=int_in(1, 100_000), default=600, help="training steps (with --train)")
    parser.add_argument("--hidden", type=int_in(8, 2048), default=128, help="MLP width (with --train)")
    parser.add_argument("--sample-steps", type=int_in(1, 1000), default=20, help="solver steps of the inpainting")


def labelled_toy(seed: int = 0):
    """The demo's labelled mixture: 6 Gaussians on a ring, 3 classes (opposite modes share one)."""
    from ..toys import ring2d
    from ..toys.joint_label import JointLabelMixture
    return JointLabelMixture(ring2d(6, 1.0, 0.3), [0, 1, 2, 0, 1, 2])


def train_digits_joint(steps: int, hidden: int, seed: int = 0, progress: bool = False):
    """A ``JointDenoiser`` (rectified flow, velocity, ``JointMLP``) trained on the digits'
    training split (``zoo.recipes.digits_classifier_split``) with one-pixel random shifts."""
    from ..jointlabel import JointDenoiser, joint_denoising_loss
    from ..nets.joint_mlp import JointMLP
    from ..process import RectifiedFlow
    from ..train import TrainConfig, fit
    from ..zoo.data import digits
    from ..zoo.recipes import digits_classifier_split
    x, y = digits()
    train_idx, _ = digits_classifier_split()
    xs, ys = x[train_idx], y[train_idx]
    torch.manual_seed(seed)
    net = JointMLP((1, 8, 8), 10, hidden=hidden, depth=3)
    joint = JointDenoiser(net, RectifiedFlow(), 10, prediction="velocity", check=False)

    def loss_fn(model, gen):
        idx = torch.randint(0, xs.shape[0], (128,), generator=gen)
        pad = torch.nn.functional.pad(xs[idx], (1, 1, 1, 1), value=-1.0)
        dx, dy = torch.randint(0, 3, (2,), generator=gen).tolist()
        return joint_denoising_loss(joint, pad[:, :, dy:dy + 8, dx:dx + 8], ys[idx], gen)

    cfg = TrainConfig(steps=steps, lr=2e-3, warmup=min(100, steps // 10), ema_decay=0.995, seed=seed,
                      checkpoint_every=0)
    res = fit(net, loss_fn, cfg, progress=progress, desc="joint digits")
    return JointDenoiser(res.ema_model(), RectifiedFlow(), 10, prediction="velocity"), res.losses


#: the bundled joint digits model (trained by ``save_digits_joint``; card: ``digits-joint.md``)
CHECKPOINT = "digits-joint"


def checkpoint_path(name: str = CHECKPOINT):
    from ..zoo.checkpoints import WEIGHTS_DIR
    return WEIGHTS_DIR / f"{name}.safetensors"


def save_digits_joint(path=None, steps: int = 4000, hidden: int = 192, seed: int = 0, progress: bool = True):
    """Train the joint digits model (``train_digits_joint``) and write its EMA weights and
    config atomically as safetensors (weights only). Returns ``(path, final loss)``."""
    import json

    from safetensors.torch import save_file

    from ..atomic import atomic_path
    joint, losses = train_digits_joint(steps, hidden, seed, progress)
    path = checkpoint_path() if path is None else path
    config = {"hidden": hidden, "depth": 3, "steps": steps, "seed": seed, "process": "rectified-flow",
              "prediction": "velocity", "final_loss": sum(losses[-200:]) / len(losses[-200:])}
    tensors = {k: v.detach().contiguous().clone() for k, v in joint.net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"config": json.dumps(config)})
    return path, config["final_loss"]


def load_digits_joint(path=None):
    """The bundled joint digits model as a ``JointDenoiser`` (weights loaded strictly)."""
    import json

    from safetensors import safe_open

    from ..jointlabel import JointDenoiser
    from ..nets.joint_mlp import JointMLP
    from ..process import RectifiedFlow
    path = checkpoint_path() if path is None else path
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    net = JointMLP((1, 8, 8), 10, hidden=int(config["hidden"]), depth=int(config["depth"]))
    net.load_state_dict(state, strict=True)
    return JointDenoiser(net.eval(), RectifiedFlow(), 10, prediction=config["prediction"]), config


def digits_figures(joint, sample_steps: int = 20, seed: int = 0) -> dict:
    """Held-out accuracies of label inpainting (one-call mean and one sampled draw) and of the
    bundled clean classifier; the clean classifier's agreement with the labels of 100
    class-conditional samples drawn by data inpainting. Returns the figures and the samples."""
    from .. import zoo
    from ..jointlabel import inpaint_data, inpaint_label, label_probabilities
    from ..zoo.data import digits
    from ..zoo.recipes import digits_classifier_split
    x, y = digits()
    _, held = digits_classifier_split()
    xh, yh = x[held], y[held]
    clf = zoo.load("digits-classifier")
    labels = torch.arange(100) % 10
    with torch.no_grad():
        mean_acc = float((label_probabilities(joint, xh).argmax(1) == yh).float().mean())
        draw_acc = float((inpaint_label(joint, xh, steps=sample_steps, seed=seed).x.argmax(1) == yh).float().mean())
        gen = inpaint_data(joint, labels, (100, 1, 8, 8), steps=sample_steps, seed=seed).x
    return {"n_heldout": int(held.numel()), "joint_label_mean_accuracy": mean_acc,
            "joint_label_sampled_accuracy": draw_acc,
            "digits_classifier_accuracy": float((clf.predict(xh) == yh).float().mean()),
            "generated_class_agreement": float((clf.predict(gen) == labels).float().mean()),
            "samples": gen}


def toy_figures(seed: int = 0, n_per_point: int = 1000, sample_steps: int = 20) -> dict:
    """Exact joint denoiser of ``labelled_toy``: label probabilities vs Bayes, sampled label
    frequencies vs Bayes, class-0 samples' moments vs the class-conditional law."""
    from ..jointlabel import JointDenoiser, inpaint_data, inpaint_label, label_probabilities
    from ..process import RectifiedFlow
    from ..toys.random_problem import floors, score
    toy = labelled_toy()
    proc = RectifiedFlow()
    joint = JointDenoiser(toy.joint_net(proc), proc, toy.num_classes, prediction="x0")
    x, _ = toy.sample(6, seed=seed)
    bayes = toy.bayes_posterior(x)
    p = label_probabilities(joint, x)
    draws = inpaint_label(joint, x.repeat_interleave(n_per_point, 0), solver="dpmpp-2m", steps=sample_steps, seed=seed).x
    freq = torch.nn.functional.one_hot(draws.argmax(1), toy.num_classes).double().reshape(6, n_per_point, -1).mean(1)
    gen = inpaint_data(joint, torch.zeros(2000, dtype=torch.long), (2000, 2), solver="dpmpp-2m", steps=sample_steps,
                       seed=seed, dtype=torch.float64).x
    target = toy.class_conditional(0)
    return {"max_prob_error": float((p - bayes).abs().max()), "max_freq_error": float((freq - bayes).abs().max()),
            "freq_sd": (0.25 / n_per_point) ** 0.5, "class0": score(gen, target), "class0_floor": floors(target, 2000),
            "toy": toy, "samples": gen}


def run(args) -> int:
    t0 = time.perf_counter()
    if args.data == "toy":
        f = toy_figures(args.seed, sample_steps=args.sample_steps)
        print(f"exact joint denoiser, 6-mode ring, 3 classes: max |E[l | x] - p(y | x)| = {f['max_prob_error']:.1e}; "
              f"sampled label frequencies within {f['max_freq_error']:.3f} of p(y | x) (binomial sd <= {f['freq_sd']:.3f})")
        c, fl = f["class0"], f["class0_floor"]
        print(f"x | y=0 by data inpainting (2000 samples): mean error {c['mean']:.3f} (floor {fl['mean']:.3f}), "
              f"covariance error {c['cov']:.3f} (floor {fl['cov']:.3f})")
        if args.out:
            from .. import viz
            from ..process import RectifiedFlow
            viz.scatter_plot(args.out, f["toy"].class_conditional(0), RectifiedFlow(), f["samples"],
                             "x | y = 0 by inpainting the data (exact joint denoiser)")
    else:
        if args.train:
            joint, losses = train_digits_joint(args.steps, args.hidden, args.seed, progress_enabled(args))
            what = f"trained here: {args.steps} steps, final loss {sum(losses[-50:]) / len(losses[-50:]):.3f}"
        else:
            joint, config = load_digits_joint()
            what = f"bundled digits-joint: {config['steps']} steps, hidden {config['hidden']}"
        f = digits_figures(joint, args.sample_steps, args.seed)
        print(f"joint digits model ({what}), "
              f"{f['n_heldout']} held-out digits: label inpainting accuracy {f['joint_label_mean_accuracy']:.3f} "
              f"(E[l | x], one call), {f['joint_label_sampled_accuracy']:.3f} (one sampled label); "
              f"digits-classifier {f['digits_classifier_accuracy']:.3f}")
        print(f"class-conditional digits by data inpainting: digits-classifier agrees with the label on "
              f"{f['generated_class_agreement']:.2f} of 100")
        if args.out:
            from .. import viz
            labels = torch.arange(100) % 10  # the labels digits_figures drew
            rows = torch.cat([f["samples"][labels == c][:8] for c in range(10)])
            viz.save_grid(args.out, rows, "rows: digits 0-9 by inpainting the data of a joint (x, label) model")
    if args.out:
        print(f"wrote {args.out}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0
