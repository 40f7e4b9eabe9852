"""``diffinfer decode``: masked-diffusion text decoding from the command line.

    diffinfer decode --model shakespeare-char --prompt "ROMEO:" --length 256 \\
        --policy threshold --threshold 0.9 --block 32
    diffinfer decode --model markov --length 64 --policy threshold --score max
    diffinfer decode --model shakespeare-char --energy shakespeare-ar --particles 32 \\
        --prompt "ROMEO:" --length 192 --block 4 --policy random
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
from ..mdm.speculative import ORDERS
from ..zoo.tasks import MARKOV_ALPHABET, TEXT_MODELS, load_text_model
from .common import (MAX_TOKENS, UsageError, add_progress, float_in, int_in, progress_enabled, seed_int, steps_int)

DECODE_MODELS = ("markov",) + tuple(TEXT_MODELS) + ("shakespeare-block",)  # block diffusion: --cache block
#: policies that decide how many tokens to commit per step themselves (--steps does not apply)
SELF_PACED = ("threshold", "factor", "dilated", "dependency", "speculative")
#: policies with a --k-max option (candidates per step) and with an --order option
K_MAX_POLICIES, ORDERED = ("dependency", "speculative"), ("speculative",)
#: policies with a --score option
SCORED = ("threshold", "factor", "confident", "rcr")
MAX_BATCH = 1024
#: causal zoo models usable as the EDLM energy (``--energy``)
ENERGY_MODELS = ("shakespeare-ar",)


def _block(value: str):
    if value in ("none", "whole"):
        return None
    if value == "adaptive":
        return "adaptive"
    try:
        block = int(value)
    except ValueError:
        raise UsageError(f"--block must be a positive int, 'adaptive' or 'none', got {value!r}") from None
    if block < 1:
        raise UsageError(f"--block must be a positive int, 'adaptive' or 'none', got {value!r}")
    return block


def fit_length(model, prompt_len: int, length: int, block) -> int:
    """``length`` if the prompt and ``length`` tokens fit the model's context; otherwise a
    ``UsageError`` naming the longest valid ``--length`` (never a silent shortening)."""
    max_len = getattr(model, "max_len", None)
    if max_len is None or prompt_len + length <= max_len:
        return length
    room = max_len - prompt_len
    if room < 1:
        raise UsageError(f"the prompt ({prompt_len} tokens) leaves no room in the model's context of {max_len}")
    raise UsageError(f"--length {length} with a {prompt_len}-token prompt exceeds the model's context of {max_len} "
                     f"tokens; valid: --length 1..{room}")


def validate(args):
    if args.model not in DECODE_MODELS:
        raise UsageError(f"unknown --model {args.model!r}; valid: {', '.join(DECODE_MODELS)}")
    block = _block(args.block)
    if args.steps is not None and args.policy in SELF_PACED:
        raise UsageError(f"--steps does not apply to --policy {args.policy} (it decides how many tokens to commit "
                         f"per step); policies with a step schedule: "
                         f"{', '.join(p for p in policy_names() if p not in SELF_PACED)}")
    if args.threshold is not None and args.policy not in ("threshold", "confident"):
        raise UsageError(f"--threshold applies to --policy threshold or confident, not {args.policy}")
    if args.factor is not None and args.policy != "factor":
        raise UsageError(f"--factor applies to --policy factor, not {args.policy}")
    if args.k_max is not None and args.policy not in K_MAX_POLICIES:
        raise UsageError(f"--k-max applies to --policy {', '.join(K_MAX_POLICIES)}, not {args.policy}")
    if args.tau is not None and args.policy != "dependency":
        raise UsageError(f"--tau applies to --policy dependency, not {args.policy}")
    if args.order is not None and args.policy not in ORDERED:
        raise UsageError(f"--order applies to --policy {', '.join(ORDERED)}, not {args.policy}")
    if args.score is not None and args.policy not in SCORED:
        raise UsageError(f"--score applies to --policy {', '.join(SCORED)}, not {args.policy}")
    if args.eos is not None and len(args.eos) != 1:
        raise UsageError(f"--eos must be one character, got {args.eos!r}")
    if args.model == "markov":
        bad = sorted(set(args.prompt + (args.eos or "")) - set(MARKOV_ALPHABET))
        if bad:
            raise UsageError(f"the markov model's alphabet is {MARKOV_ALPHABET!r}; --prompt / --eos have {bad}")
    if args.batch * (len(args.prompt) + args.length) > MAX_BATCH * MAX_TOKENS // 8:
        raise UsageError(f"--batch {args.batch} x {len(args.prompt) + args.length} tokens is too large "
                         f"(at most {MAX_BATCH * MAX_TOKENS // 8} tokens per run)")
    if args.steps is not None and args.steps > args.length:
        raise UsageError(f"--steps {args.steps} exceeds --length {args.length} (at least one token per step)")
    if args.particles is not None and args.energy is None:
        raise UsageError("--particles applies with --energy (EDLM reweighting)")
    if args.energy is not None:
        validate_energy(args, block)
    return block


def validate_energy(args, block):
    """``--energy``: an AR model scores prefixes exactly, so every step must commit one whole
    block, left to right (``--block B``, ``--steps length/B``, a scheduled policy)."""
    if args.energy not in ENERGY_MODELS:
        raise UsageError(f"unknown --energy {args.energy!r}; valid: {', '.join(ENERGY_MODELS)}")
    if args.model == "markov":
        raise UsageError("--energy scores text of the shakespeare models; --model markov has no AR energy")
    if not isinstance(block, int) or args.length % block:
        raise UsageError(f"--energy needs --block B dividing --length {args.length} (one block per step, left "
                         f"to right, so the AR model scores the decoded prefix exactly)")
    if args.policy in SELF_PACED or args.policy == "rcr":
        raise UsageError(f"--energy needs a scheduled policy that commits the whole block per step, not "
                         f"{args.policy}; e.g. --policy random")
    if args.steps is not None and args.steps != args.length // block:
        raise UsageError(f"--energy commits one block per step: --steps must be --length / --block = "
                         f"{args.length // block}, got {args.steps}")
    if args.cache != "none":
        raise UsageError("--energy works without a cache (--cache none)")


def _progress_callback(args, total):
    if not progress_enabled(args):
        return None, None
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=f"decode ({args.policy})", unit="step", leave=False, file=sys.stderr)
    return bar, (lambda step, tokens, info: bar.update(1))


def cmd_decode(args) -> int:
    block = validate(args)
    model, codec = load_text_model(args.model)
    options = {}
    if args.policy in ("threshold", "confident"):
        options["threshold"] = 0.9 if args.threshold is None else args.threshold
    if args.policy == "factor":
        options["factor"] = 1.0 if args.factor is None else args.factor
    if args.score:
        options["score"] = args.score
    if args.k_max is not None:
        options["k_max"] = args.k_max
    if args.order is not None:
        options["order"] = args.order
    if args.tau is not None:
        options["tau"] = args.tau
    prompt = codec.encode(args.prompt) if args.prompt else None
    delimiters = None
    if args.block == "adaptive":
        delim = "\n" if args.model != "markov" else MARKOV_ALPHABET[-1]
        delimiters = codec.encode(delim).tolist()
    eos = codec.encode(args.eos).tolist()[0] if args.eos else None
    length = fit_length(model, 0 if prompt is None else len(prompt), args.length, block)
    steps, reweight = args.steps, None
    if args.energy is not None:
        from ..mdm.ar_energy import ar_prefix_energy
        from ..mdm.ar_reweighting import ARCompletedReweighting
        from ..zoo import load
        steps = length // block
        reweight = ARCompletedReweighting(ar_prefix_energy(load(args.energy), model.mask_id),
                                          particles=args.particles or 16, draw="columns")
    bar, callback = _progress_callback(args, steps or length)
    try:
        result = decode(model, prompt=prompt, length=length, policy=args.policy, steps=steps,
                        block=block, cache=args.cache, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed, eos_id=eos, batch=args.batch, cfg=args.cfg,
                        schedule=args.schedule, delimiters=delimiters, callback=callback, reweight=reweight,
                        **options)
    finally:
        if bar is not None:
            bar.close()
    stats = result.stats()
    if reweight is not None:  # EDLM: the energy model's calls count as calls too
        calls = result.nfe + result.energy_calls
        stats["tokens_per_call"] = round(float(result.decoded_per_row.sum()) / (args.batch * max(1, calls)), 4)
        stats["energy"], stats["particles"] = args.energy, reweight.particles
    if args.model == "markov":
        chain = model
        full = result.tokens[:, : int(result.gen_end.max())]
        stats["nll_per_token"] = round(nll_per_token(full, chain), 4) if (full != chain.mask_id).all() else None
        stats["chain_entropy_rate"] = round(chain.entropy_rate(), 4)
    texts = [codec.decode(row[: s + length]) for row, s in zip(result.tokens.tolist(), result.gen_start.tolist())]
    if args.json:  # one JSON document per sample, one per line (JSON lines)
        for i, text in enumerate(texts):
            print(json.dumps({"sample": i, "text": text, "stats": stats}, allow_nan=False, default=str))
        return 0
    for text in texts:
        print(text)
        print("-" * 40)
    print("  ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("decode", help="decode text with a masked-diffusion LM (every unmasking policy)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--model", default="markov", help="'markov' (built-in exact oracle) or a zoo text model, "
                   "e.g. shakespeare-char")
    p.add_argument("--prompt", default="", help="text the generation continues")
    p.add_argument("--length", type=int_in(1, MAX_TOKENS), default=64, help=f"tokens to generate (1-{MAX_TOKENS})")
    p.add_argument("--policy", default="threshold", choices=policy_names())
    p.add_argument("--threshold", type=float_in(0.0, 1.0), default=None,
                   help="threshold / confident policies (default 0.9)")
    p.add_argument("--factor", type=float_in(0.0, lo_open=True), default=None,
                   help="factor policy (Fast-dLLM; default 1.0)")
    p.add_argument("--score", default=None, choices=SCORES,
                   help="score for threshold / factor / confident / rcr")
    p.add_argument("--k-max", type=int_in(1, 256), default=None,
                   help="dependency / speculative policies: candidates per step (default 8)")
    p.add_argument("--tau", type=float_in(0.0), default=None,
                   help="dependency policy: the largest leave-one-out KL (nats) committed together (default 0.01)")
    p.add_argument("--order", default=None, choices=ORDERS,
                   help="speculative policy: the order drafts are verified in (default random)")
    p.add_argument("--steps", type=steps_int, default=None,
                   help=f"steps for scheduled policies (default: length; not for {', '.join(SELF_PACED)})")
    p.add_argument("--block", default="none", help="block length, 'adaptive' or 'none'")
    p.add_argument("--cache", default="none", choices=CACHE_MODES)
    p.add_argument("--schedule", default="linear", choices=sorted(SCHEDULES))
    p.add_argument("--temperature", type=float_in(0.0, 100.0), default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=int_in(1), default=None)
    p.add_argument("--top-p", type=float_in(0.0, 1.0, lo_open=True), default=None)
    p.add_argument("--cfg", type=float_in(0.0, 100.0), default=0.0, help="LLaDA classifier-free guidance weight")
    p.add_argument("--energy", default=None, help=f"EDLM reweighting under an AR model ({', '.join(ENERGY_MODELS)}): "
                   "each step's block but its last token is resampled among --particles candidates, the last "
                   "token is drawn from the AR model (mdm.ARCompletedReweighting); needs --block B and one block "
                   "per step; tokens_per_call counts the energy's calls too")
    p.add_argument("--particles", type=int_in(1, 4096), default=None, help="candidates per row and step with "
                   "--energy (default 16)")
    p.add_argument("--eos", default=None, help="end-of-sequence character (one character)")
    p.add_argument("--batch", type=int_in(1, MAX_BATCH), default=1, help=f"samples (1-{MAX_BATCH})")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per sample per line (text and the run's stats): one document "
                        "for --batch 1, JSON lines otherwise")
    add_progress(p)
    p.set_defaults(func=cmd_decode)
