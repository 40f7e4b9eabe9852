"""Benchmark of block diffusion with the exact block cache (issue 18, item 4; SDAR, Cheng et al.
2025; BD3-LM, Arriola et al. 2025).

Model: the bundled ``shakespeare-block`` (``CharTransformer(attention="block-causal", block=16)``,
block-diffusion loss, started from ``shakespeare-ar`` with Dream's logit shift). Measured:

- held-out bound: the block-diffusion ELBO (nats per character, an upper bound on the NLL) on 64
  held-out windows of 128 characters, beside ``shakespeare-ar``'s NLL and ``shakespeare-char``'s
  masked-diffusion ELBO on the same windows;
- decoding 16 samples of 128 characters (no prompt, blocks of 16, random order within a block,
  temperature 1) at 128 and 32 steps, with ``cache="none"`` (every call evaluates the whole canvas,
  block by block), the same through the one-pass masked forward (faster, equal only up to
  round-off) and ``cache="block"`` (finished blocks' keys/values reused): model calls (NFE),
  tokens per call, positions the network computes per row and call, wall time per generated token
  (median of 2 runs, one thread), whether the two give bitwise the same tokens, and the generative
  perplexity under ``shakespeare-ar`` (``zoo.quality.generative_perplexity``) and unigram entropy;
- reference: ``shakespeare-char`` (bidirectional masked diffusion) decoded the same way, without a
  cache and with Fast-dLLM's approximate ``dual`` cache.

    python bench/mdm_sdar.py           # about 3 minutes on one thread
    python bench/mdm_sdar.py --quick   # 4 samples, one timing run

Writes ``bench/results/mdm_sdar.json`` and ``bench/results/mdm_sdar.md``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from diffinfer import zoo  # noqa: E402
from diffinfer.atomic import write_text as atomic_write_text  # noqa: E402
from diffinfer.mdm import MaskedModel, as_masked_model, decode  # noqa: E402
from diffinfer.mdm.block_diffusion import block_elbo  # noqa: E402
from diffinfer.zoo.quality import ar_nll, generative_perplexity, heldout_windows, mdm_elbo, unigram_entropy  # noqa: E402

LENGTH, BLOCK = 128, 16
STEPS = (128, 32)


class OnePass(MaskedModel):
    """The block-causal network through its one-pass masked forward (``net(tokens)``): the fast
    uncached path, equal to the block-by-block one only up to round-off."""

    def __init__(self, net, mask_id, shift_logits):
        super().__init__(mask_id, net.vocab_size)
        self.net, self.shift_logits, self.max_len = net, shift_logits, net.max_len

    @torch.no_grad()
    def raw_logits(self, tokens):
        return self.net(tokens)


def _decode(model, n, steps, cache, repeats):
    walls, res = [], None
    for _ in range(repeats):
        if hasattr(model, "positions"):
            model.positions = 0
        res = decode(model, length=LENGTH, batch=n, policy="random", steps=steps, block=BLOCK, cache=cache,
                     seed=0, temperature=1.0)
        walls.append(res.wall_time)
    out = {"steps": steps, "cache": cache, "nfe": res.nfe, "tokens_per_nfe": round(res.tokens_per_nfe, 4),
           "wall_ms_per_token": round(1000 * statistics.median(walls) / (n * LENGTH), 4),
           "gen_ppl": round(generative_perplexity(res.tokens), 3),
           "unigram_entropy": round(unigram_entropy(res.tokens), 4)}
    if hasattr(model, "positions"):
        out["positions_per_row_call"] = round(model.positions / (n * res.nfe), 2)
    return out, res.tokens


def run(n: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    text = zoo.load("shakespeare-block")
    block = as_masked_model(text)  # BlockCausalModel: the exact block cache, position counts
    char = zoo.load("shakespeare-char")
    x = heldout_windows(64, LENGTH, seed=0)
    heldout = {"block_elbo": round(block_elbo(text.net, x, text.mask_id, draws=8, shift=text.shift_logits), 4),
               "ar_nll": round(float(ar_nll(x).mean()), 4),
               "char_mdm_elbo": round(mdm_elbo(char, x, draws=8), 4),
               "heldout_gen_ppl": round(generative_perplexity(x), 3),
               "heldout_unigram_entropy": round(unigram_entropy(x), 4)}
    rows = []
    for steps in STEPS:
        plain, tp = _decode(block, n, steps, "none", repeats)
        cached, tc = _decode(block, n, steps, "block", repeats)
        one, to = _decode(OnePass(text.net, text.mask_id, text.shift_logits), n, steps, "none", repeats)
        one["cache"] = "none (one masked pass)"
        cached["bitwise_equal_to_none"] = bool(torch.equal(tp, tc))
        one["bitwise_equal_to_none"] = bool(torch.equal(tp, to))
        cached["speedup"] = round(plain["wall_ms_per_token"] / cached["wall_ms_per_token"], 2)
        cached["speedup_vs_one_pass"] = round(one["wall_ms_per_token"] / cached["wall_ms_per_token"], 2)
        rows += [dict(model="shakespeare-block", **r) for r in (plain, one, cached)]
        for cache in ("none", "dual"):
            r, _ = _decode(char, n, steps, cache, repeats)
            rows.append(dict(model="shakespeare-char", **r))
    samples = [text.decode(row) for row in tc[:2].tolist()]
    return {"n": n, "length": LENGTH, "block": BLOCK, "repeats": repeats, "heldout": heldout, "decode": rows,
            "samples_block_cache_32_steps": samples, "threads": torch.get_num_threads(),
            "bench_seconds": round(time.perf_counter() - t0, 1)}


def write_markdown(res: dict, path: pathlib.Path) -> None:
    h = res["heldout"]
    lines = ["# Block diffusion with the exact block cache (SDAR / BD3-LM)", "",
             f"Held-out windows of {res['length']} characters (64): block-diffusion ELBO of `shakespeare-block` "
             f"**{h['block_elbo']}** nats/char; `shakespeare-ar` NLL {h['ar_nll']}; `shakespeare-char` "
             f"masked-diffusion ELBO {h['char_mdm_elbo']}; held-out text: gen. perplexity {h['heldout_gen_ppl']}, "
             f"unigram entropy {h['heldout_unigram_entropy']}.", "",
             f"Decoding {res['n']} samples x {res['length']} characters, blocks of {res['block']}, random order "
             f"within a block, temperature 1, one thread (wall time: median of {res['repeats']}).", "",
             "| model | steps | cache | NFE | tokens/NFE | positions/row/call | ms/token | speed-up (vs none; vs one pass) "
             "| bitwise = none | gen. ppl | unigram H |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["decode"]:
        lines.append(f"| {r['model']} | {r['steps']} | {r['cache']} | {r['nfe']} | {r['tokens_per_nfe']} | "
                     f"{r.get('positions_per_row_call', '')} | {r['wall_ms_per_token']} | "
                     f"{'%s; %s' % (r['speedup'], r['speedup_vs_one_pass']) if 'speedup' in r else ''} | "
                     f"{r.get('bitwise_equal_to_none', '')} | {r['gen_ppl']} | {r['unigram_entropy']} |")
    lines += ["", "Samples (`shakespeare-block`, block cache, 32 steps):", ""]
    lines += [f"```\n{s}\n```" for s in res["samples_block_cache_32_steps"]]
    lines += ["", f"Bench time {res['bench_seconds']} s."]
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 samples, one timing run")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = run(4, 1) if args.quick else run(16, 2)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "mdm_sdar_quick" if args.quick else "mdm_sdar"
    atomic_write_text(out / f"{stem}.json", json.dumps(res, indent=1))
    write_markdown(res, out / f"{stem}.md")
    print((out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
