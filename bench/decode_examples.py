"""The README's text-decoding examples, each measured: generative perplexity under
``shakespeare-ar`` against the AR model's own held-out perplexity (issue 18: every decode
example must print text at most 2x the held-out perplexity), and tokens per model call.

Each example runs through the CLI exactly as written in the README (``diffinfer decode ...``)
with ``--json --batch 8`` (eight samples, seeds ``(seed, row)``); the perplexity scores the
generated characters after the prompt. Writes ``bench/results/decode_examples.{json,md}``.

    python bench/decode_examples.py     # a few minutes on one thread
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import pathlib
import shlex
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffinfer.atomic import write_text  # noqa: E402
from diffinfer.cli import main as cli  # noqa: E402
from diffinfer.zoo.data import shakespeare_vocab  # noqa: E402
from diffinfer.zoo.quality import generative_perplexity, heldout_windows  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
#: the README's examples (exactly as written there); the bar: at most BAR x the held-out perplexity
EXAMPLES = (
    'diffinfer decode --model shakespeare-char --prompt "ROMEO:" --length 192 --policy low-confidence --steps 192 --block 16',
    'diffinfer decode --model shakespeare-char --prompt "ROMEO:" --length 192 --policy random --steps 192 --block 1',
    'diffinfer decode --model shakespeare-char --prompt "ROMEO:" --length 192 --policy threshold --threshold 0.9 --block 32',
    'diffinfer decode --model shakespeare-block --prompt "ROMEO:" --length 96 --block 16 --policy random --steps 48 --cache block',
    'diffinfer decode --model shakespeare-block --prompt "ROMEO:" --length 96 --block 16 --policy random --steps 96 --cache block',
    'diffinfer decode --model shakespeare-char --energy shakespeare-ar --particles 32 --prompt "ROMEO:" --length 192 --block 4 --policy random',
)
BAR = 2.0
BATCH = 8


def run_example(command: str) -> dict:
    argv = shlex.split(command)[1:] + ["--json", "--batch", str(BATCH), "--no-progress"]
    prompt = argv[argv.index("--prompt") + 1]
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        status = cli(argv)
    if status:
        raise RuntimeError(f"{command} exited {status}")
    rows = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    vocab = shakespeare_vocab()
    tokens = torch.stack([vocab.encode(r["text"]) for r in rows])  # [BATCH, len(prompt) + length]
    return {"command": command, "gen_ppl": generative_perplexity(tokens, start=len(prompt)),
            # with --energy the energy model's calls count too (tokens_per_call)
            "tokens_per_nfe": sum(r["stats"].get("tokens_per_call", r["stats"]["tokens_per_nfe"]) for r in rows)
            / len(rows),
            "wall_s": round(time.perf_counter() - start, 1), "first_text": rows[0]["text"]}


def main(argv=None) -> int:
    torch.set_num_threads(1)
    heldout = generative_perplexity(heldout_windows(64, 256))
    rows = []
    for command in EXAMPLES:
        r = run_example(command)
        r["ratio"] = r["gen_ppl"] / heldout
        r["met"] = r["ratio"] <= BAR
        rows.append(r)
        print(f"{r['gen_ppl']:.2f} ({r['ratio']:.2f}x) {r['tokens_per_nfe']:.2f} tok/call  {command}", flush=True)
    lines = [f"Held-out perplexity of `shakespeare-ar` (64 windows of 256): {heldout:.2f}; bar: generated text "
             f"at most {BAR:g}x that. {BATCH} samples per example.", "",
             "| example | tokens per call | generative perplexity | ratio | bar |", "|---|---|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['tokens_per_nfe']:.2f} | {r['gen_ppl']:.2f} | {r['ratio']:.2f} | "
              f"{'met' if r['met'] else '**missed**'} |" for r in rows]
    write_text(RESULTS / "decode_examples.json", json.dumps({"heldout_ppl": heldout, "bar": BAR, "rows": rows},
                                                           indent=1))
    write_text(RESULTS / "decode_examples.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(math.isfinite(r["gen_ppl"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
