"""``diffinfer decode``: masked-diffusion text decoding from the command line.

    diffinfer decode --model shakespeare-char --prompt "ROMEO:" --length 256 \\
        --policy threshold --threshold 0.9 --block 32
    diffinfer decode --model markov --length 64 --policy threshold --score max
"""
from __future__ import annotations

import argparse
import json
import sys

from ..mdm.caching import CACHE_MODES
from ..mdm.decode import decode
from ..mdm.metrics import nll_per_token
from ..mdm.policies import policy_names
from ..mdm.sampling import SCORES
from ..mdm.schedules import SCHEDULES
from ..zoo.tasks import MARKOV_ALPHABET, load_text_model


def _block(value: str):
    if value in ("none", "whole"):
        return None
    if value == "adaptive":
        return "adaptive"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--block must be an int, 'adaptive' or 'none', got {value!r}") from None


def fit_length(model, prompt_len: int, length: int, block) -> int:
    """Shorten ``length`` (to a multiple of an int ``block``) when prompt + length exceeds the
    model's context, saying so on stderr; the library itself raises instead."""
    max_len = getattr(model, "max_len", None)
    if max_len is None or prompt_len + length <= max_len:
        return length
    fitted = max_len - prompt_len
    if isinstance(block, int):
        fitted -= fitted % block
    if fitted < 1:
        raise ValueError(f"the prompt ({prompt_len} tokens) leaves no room in the model's context of {max_len}")
    print(f"note: the model's context holds {max_len} tokens; generating {fitted} instead of {length}",
          file=sys.stderr)
    return fitted


def cmd_decode(args) -> int:
    model, codec = load_text_model(args.model)
    options = {}
    if args.policy in ("threshold", "confident"):
        options["threshold"] = args.threshold
    if args.policy == "factor":
        options["factor"] = args.factor
    if args.score and args.policy not in ("random", "ancestral", "low-confidence", "margin", "entropy"):
        options["score"] = args.score
    prompt = codec.encode(args.prompt) if args.prompt else None
    delimiters = None
    if args.block == "adaptive":
        delim = "\n" if args.model != "markov" else MARKOV_ALPHABET[-1]
        delimiters = codec.encode(delim).tolist()
    eos = codec.encode(args.eos).tolist()[0] if args.eos else None
    length = fit_length(model, 0 if prompt is None else len(prompt), args.length, _block(args.block))
    result = decode(model, prompt=prompt, length=length, policy=args.policy, steps=args.steps,
                    block=_block(args.block), cache=args.cache, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed, eos_id=eos, batch=args.batch, cfg=args.cfg,
                    schedule=args.schedule, delimiters=delimiters, **options)
    stats = result.stats()
    if args.model == "markov":
        chain = model
        full = result.tokens[:, : int(result.gen_end.max())]
        stats["nll_per_token"] = round(nll_per_token(full, chain), 4) if (full != chain.mask_id).all() else None
        stats["chain_entropy_rate"] = round(chain.entropy_rate(), 4)
    for row, s in zip(result.tokens.tolist(), result.gen_start.tolist()):
        text = codec.decode(row[: s + length])
        print(text if not args.json else json.dumps(text))
        print("-" * 40)
    print(json.dumps(stats) if args.json else "  ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("decode", help="decode text with a masked-diffusion LM (every unmasking policy)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--model", default="markov", help="'markov' (built-in exact oracle) or a zoo text model, "
                   "e.g. shakespeare-char")
    p.add_argument("--prompt", default="", help="text the generation continues")
    p.add_argument("--length", type=int, default=64, help="tokens to generate")
    p.add_argument("--policy", default="threshold", choices=policy_names())
    p.add_argument("--threshold", type=float, default=0.9, help="threshold / confident policies")
    p.add_argument("--factor", type=float, default=1.0, help="factor policy (Fast-dLLM)")
    p.add_argument("--score", default=None, choices=SCORES,
                   help="score for threshold / factor / confident / rcr")
    p.add_argument("--steps", type=int, default=None, help="steps for scheduled policies (default: length)")
    p.add_argument("--block", default="none", help="block length, 'adaptive' or 'none'")
    p.add_argument("--cache", default="none", choices=CACHE_MODES)
    p.add_argument("--schedule", default="linear", choices=sorted(SCHEDULES))
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--cfg", type=float, default=0.0, help="LLaDA classifier-free guidance weight")
    p.add_argument("--eos", default=None, help="end-of-sequence character")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_decode)
