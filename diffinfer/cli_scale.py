"""``diffinfer scale``: spend a budget on inference-time search or steering.

    diffinfer scale --model digits --method smc --reward class:7 --budget 2000 --out grid.png
    diffinfer scale --model tilted --method dts --budget 4000
    diffinfer scale --model shakespeare-char --method smc --reward 'regex:the' --budget 600 --length 32

Prints the reward reached, the per-sample NFE and the verifier calls. Models: the toy
``tilted`` (a 2-D mixture whose reward-tilted target is exact, ``diffinfer.toys.tilted``),
the toy presets, a bundled digits model (``digits``, ``digits-flow``) with
``--reward class:K`` scored by the bundled clean classifier, or the bundled masked-diffusion
text model ``shakespeare-char`` (methods ``best-of-n`` and ``smc``; rewards ``regex:PATTERN``,
``keyword:W1,W2``, ``ar-loglik`` under ``shakespeare-ar``), which also prints the text.
"""
from __future__ import annotations

import argparse

import torch

from .scaling import METHODS, run
from .scaling.text import TEXT_METHODS, TEXT_REWARDS, decoding_plan, get_text_verifier, run_text
from .scaling.verifiers import get_verifier
from .toys import gaussian_mixture

TOY_MODELS = ["tilted"] + sorted(gaussian_mixture.PRESETS)
DIGIT_MODELS = ("digits", "digits-flow")
TEXT_MODELS = ("shakespeare-char",)
ALL_MODELS = TOY_MODELS + list(DIGIT_MODELS) + list(TEXT_MODELS)


def load_problem(model: str, reward_spec: str | None, lam: float):
    """``(den, reward, shape, toy, target)`` for a model name and a reward spec."""
    from .process import VP
    if model == "tilted":
        from .toys.tilted import tilted_example
        prior, measure, target = tilted_example(lam)
        reward = measure if reward_spec in (None, "measurement") else get_verifier(reward_spec, toy=prior)
        return prior.denoiser(VP()), reward, (2,), prior, (target if reward is measure else None)
    if model in gaussian_mixture.PRESETS:
        toy = gaussian_mixture.preset(model)
        return toy.denoiser(VP()), get_verifier(reward_spec or "density", toy=toy), (toy.dim,), toy, None
    if model in DIGIT_MODELS:
        from . import zoo
        try:
            base = zoo.load(model)
            clf = zoo.load("digits-classifier")
        except Exception as e:  # noqa: BLE001 - report any missing checkpoint plainly
            raise ValueError(f"cannot load bundled model {model!r} or its classifier: {e}") from None
        reward = get_verifier(reward_spec or "class:0", classifier=clf.clean)
        # no label bound: the network uses its null class (unconditional) at every batch size
        return base, reward, tuple(base.shape), None, None
    raise ValueError(f"unknown model {model!r}; valid: {', '.join(ALL_MODELS)}")


def load_text_problem(model: str, reward_spec: str | None):
    """``(masked model, verifier)`` for a bundled text model and a text reward spec."""
    from .mdm.cli import load_text_model
    if reward_spec is None:
        raise ValueError(f"text models need --reward; valid: {', '.join(TEXT_REWARDS)}")
    mdm, codec = load_text_model(model)
    return mdm, get_text_verifier(reward_spec, codec.decode)


def cmd_scale_text(args) -> int:
    """``scale`` on a text model: best-of-N or SMC over masked-diffusion decoding."""
    if args.method not in TEXT_METHODS:
        raise ValueError(f"method {args.method!r} does not run on text models; valid: {', '.join(TEXT_METHODS)}")
    model, reward = load_text_problem(args.model, args.reward)
    k, S = decoding_plan(args.length, args.steps)
    with torch.no_grad():
        res = run_text(args.method, model, reward, args.budget, args.length, steps=args.steps, seed=args.seed,
                       lam=args.lam)
    r = res.reward.double()
    best = int(torch.argmax(r))
    texts = [model.decode(row) for row in res.x.tolist()]
    print(f"model={args.model} method={args.method} reward={args.reward} budget={args.budget} "
          f"length={args.length} steps={S} tokens_per_step={k}")
    print(f"reward: mean={float(r.mean()):.4f} max={float(r.max()):.4f} over {r.numel()} samples")
    print(f"NFE={res.nfe} verifier_calls={res.verifier_calls} cost={res.cost}")
    print(f"text (best, reward {float(r[best]):.4f}):")
    print(texts[best])
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n\n".join(f"# reward {float(v):.4f}\n{t}" for v, t in zip(r.tolist(), texts)) + "\n")
        print(f"wrote {args.out}")
    return 0


def save_grid(path: str, x: torch.Tensor, title: str) -> None:
    """Images ``[B, 1, H, W]`` as a grid PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = x.shape[0]
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(x[k, 0].float().numpy(), cmap="gray")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_scale(args) -> int:
    if args.model in TEXT_MODELS:
        return cmd_scale_text(args)
    den, reward, shape, toy, target = load_problem(args.model, args.reward, args.lam)
    dtype = torch.float64 if toy is not None else torch.float32
    options = {}
    if args.method in ("best-of-n", "dts"):
        options["n_samples"] = args.n
    with torch.no_grad():
        res = run(args.method, den, reward, args.budget, shape, steps=args.steps, seed=args.seed, lam=args.lam,
                  dtype=dtype, **options)
    r = res.reward.double()
    print(f"model={args.model} method={args.method} budget={args.budget} steps={args.steps}")
    print(f"reward: mean={float(r.mean()):.4f} max={float(r.max()):.4f} over {r.numel()} samples")
    print(f"NFE={res.nfe} verifier_calls={res.verifier_calls} cost={res.cost}")
    if target is not None and res.x.shape[0] > 1:
        from .toys.tilted import mode_fractions
        w = mode_fractions(target, res.x)
        print(f"mode weights: {[round(v, 3) for v in w.tolist()]} (exact tilted target: "
              f"{[round(v, 3) for v in target.weights.tolist()]})")
    if args.out:
        if toy is not None:
            from .cli_core import scatter_plot
            from .process import VP
            scatter_plot(args.out, target if target is not None else toy, VP(), res.x,
                         f"{args.model} | {args.method} | cost {res.cost}")
        else:
            save_grid(args.out, res.x[:64], f"{args.model} | {args.method} | reward {float(r.mean()):.2f} | cost {res.cost}")
        print(f"wrote {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="inference-time scaling: search, SMC, tree search, budget forcing")
    p.add_argument("--model", default="tilted", help=f"one of {', '.join(ALL_MODELS)}")
    p.add_argument("--method", default="smc",
                   help=f"one of {', '.join(METHODS)} ({', '.join(TEXT_METHODS)} on text models)")
    p.add_argument("--reward", default=None,
                   help="class:K (digits), density, region:R, measurement (tilted; its default); "
                        f"text: {', '.join(TEXT_REWARDS)}")
    p.add_argument("--budget", type=int, default=2000, help="per-sample NFE plus verifier calls")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (text: at most this many decoding steps)")
    p.add_argument("--length", type=int, default=64, help="tokens to generate (text models)")
    p.add_argument("--lam", type=float, default=1.0, help="tilt strength for smc / dts")
    p.add_argument("--n", type=int, default=16, help="samples to return (best-of-n, dts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="output PNG (a scatter for toys, a grid for digits); for text, a .txt of the samples")
    p.set_defaults(func=cmd_scale)
