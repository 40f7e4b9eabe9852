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

from ..process import VP
from ..scaling import METHODS, run
from ..scaling.text import TEXT_METHODS, TEXT_REWARDS, decoding_plan, run_text
from ..viz import save_grid, scatter_plot
from ..zoo.tasks import DIGIT_MODELS, SCALE_MODELS, TEXT_MODELS, load_problem, load_text_problem
from .common import (UsageError, add_progress, check_out, finite_float, int_in, model_call_progress, samples_int,
                     seed_int, steps_int, write_text)

#: per-sample budget (NFE + verifier calls) a run may spend: beyond, it runs for hours
MAX_BUDGET = {"toy": 1_000_000, "digits": 50_000, "text": 20_000}
TEXT_LENGTH = 256


def validate(args) -> str:
    """Check every option against the model before any work."""
    if args.model not in SCALE_MODELS:
        raise UsageError(f"unknown --model {args.model!r}; valid: {', '.join(SCALE_MODELS)}")
    kind = "text" if args.model in TEXT_MODELS else "digits" if args.model in DIGIT_MODELS else "toy"
    methods = TEXT_METHODS if kind == "text" else METHODS
    if args.method not in methods:
        raise UsageError(f"--method {args.method!r} does not run on --model {args.model}; valid: {', '.join(methods)}")
    if args.budget > MAX_BUDGET[kind]:
        raise UsageError(f"--budget {args.budget}: at most {MAX_BUDGET[kind]} per sample for --model {args.model} "
                         f"(beyond, a run takes hours)")
    if args.n is not None and (kind == "text" or args.method not in ("best-of-n", "dts")):
        raise UsageError(f"--n applies to --method best-of-n or dts on toy and digits models, not {args.method} "
                         f"on {args.model}")
    if args.length is not None and kind != "text":
        raise UsageError(f"--length applies to text models ({', '.join(TEXT_MODELS)}), not {args.model}")
    args.n = 16 if args.n is None else args.n
    args.length = 64 if args.length is None else args.length
    if kind == "text" and args.length > TEXT_LENGTH:
        raise UsageError(f"--length {args.length}: the text model's context holds {TEXT_LENGTH} tokens; "
                         f"valid: 1..{TEXT_LENGTH}")
    check_out(args.out)
    return kind


def cmd_scale_text(args) -> int:
    """``scale`` on a text model: best-of-N or SMC over masked-diffusion decoding."""
    model, reward = load_text_problem(args.model, args.reward)
    k, S = decoding_plan(args.length, args.steps)
    with torch.no_grad(), model_call_progress(args, f"scale ({args.method})"):
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
        write_text(args.out, "\n\n".join(f"# reward {float(v):.4f}\n{t}" for v, t in zip(r.tolist(), texts)) + "\n")
        print(f"wrote {args.out}")
    return 0


def cmd_scale(args) -> int:
    if validate(args) == "text":
        return cmd_scale_text(args)
    den, reward, shape, toy, target = load_problem(args.model, args.reward, args.lam)
    dtype = torch.float64 if toy is not None else torch.float32
    options = {}
    if args.method in ("best-of-n", "dts"):
        options["n_samples"] = args.n
    with torch.no_grad(), model_call_progress(args, f"scale ({args.method})"):
        res = run(args.method, den, reward, args.budget, shape, steps=args.steps, seed=args.seed, lam=args.lam,
                  dtype=dtype, **options)
    r = res.reward.double()
    print(f"model={args.model} method={args.method} budget={args.budget} steps={args.steps}")
    print(f"reward: mean={float(r.mean()):.4f} max={float(r.max()):.4f} over {r.numel()} samples")
    print(f"NFE={res.nfe} verifier_calls={res.verifier_calls} cost={res.cost}")
    if target is not None and res.x.shape[0] > 1:
        from ..toys.tilted import mode_fractions
        w = mode_fractions(target, res.x)
        print(f"mode weights: {[round(v, 3) for v in w.tolist()]} (exact tilted target: "
              f"{[round(v, 3) for v in target.weights.tolist()]})")
    if args.out:
        if toy is not None:
            scatter_plot(args.out, target if target is not None else toy, VP(), res.x,
                         f"{args.model} | {args.method} | cost {res.cost}")
        else:
            save_grid(args.out, res.x[:64], f"{args.model} | {args.method} | reward {float(r.mean()):.2f} | cost {res.cost}")
        print(f"wrote {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="inference-time scaling: search, SMC, tree search, budget forcing")
    p.add_argument("--model", default="tilted", help=f"one of {', '.join(SCALE_MODELS)}")
    p.add_argument("--method", default="smc",
                   help=f"one of {', '.join(METHODS)} ({', '.join(TEXT_METHODS)} on text models)")
    p.add_argument("--reward", default=None,
                   help="class:K (digits), density, region:R, measurement (tilted; its default); "
                        f"text: {', '.join(TEXT_REWARDS)}")
    p.add_argument("--budget", type=int_in(1), default=2000, help="per-sample NFE plus verifier calls")
    p.add_argument("--steps", type=steps_int, default=20, help="sampler steps (text: at most this many decoding steps)")
    p.add_argument("--length", type=int_in(1, TEXT_LENGTH), default=None,
                   help="tokens to generate (text models; default 64)")
    p.add_argument("--lam", type=finite_float, default=1.0, help="tilt strength for smc / dts")
    p.add_argument("--n", type=int_in(1, 4096), default=None, help="samples to return (best-of-n, dts; default 16)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default=None,
                   help="output PNG (a scatter for toys, a grid for digits); for text, a .txt of the samples")
    add_progress(p)
    p.set_defaults(func=cmd_scale)
