"""The README's text-decoding examples, each measured: generative perplexity under
``shakespeare-ar`` against the AR model's own held-out perplexity (issue 18: every decode
example must print text at most 2x the held-out perplexity), and tokens per model call.

The examples are read from the README (every ``diffinfer decode --model shakespeare-...``
command it shows), and each runs through the CLI exactly as written there
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
import re
import shlex
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffinfer.atomic import write_text  # noqa: E402
from diffinfer.cli import main as cli  # noqa: E402
from diffinfer.zoo.data import shakespeare_vocab  # noqa: E402
from diffinfer.zoo.quality import generative_perplexity, heldout_windows, unigram_entropy  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_decode_commands(text: str | None = None) -> list[str]:
    """Every ``diffinfer decode ...`` command the README shows (in a code block or inline
    code), sorted, each once: the examples are read from the README itself, so the table
    cannot drift from it."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return sorted(set(re.findall(r"(diffinfer decode [^`\n#]*?)\s*(?:`|#|\n)", text)))


def readme_text_examples(text: str | None = None) -> list[str]:
    """The README's decode commands on the Shakespeare text models (the ones the bar is about)."""
    return [c for c in readme_decode_commands(text) if "--model shakespeare-" in c]


#: configurations measured beside the examples (the README quotes them in prose, not as commands)
OTHER = (
    'diffinfer decode --model shakespeare-char --prompt "ROMEO:" --length 192 --policy low-confidence --steps 192 --block 16',
    'diffinfer decode --model shakespeare-char --prompt "ROMEO:" --length 192 --policy threshold --threshold 0.9 --block 32',
    'diffinfer decode --model shakespeare-char --prompt "ROMEO:" --length 192 --policy random --steps 96 --block 2',
    'diffinfer decode --model shakespeare-block --prompt "ROMEO:" --length 96 --block 16 --policy random --steps 48 --cache block',
    'diffinfer decode --model shakespeare-block --prompt "ROMEO:" --length 96 --block 16 --policy random --steps 96 --cache block',
)


#: the bar: at most BAR x the held-out perplexity
BAR = 2.0
#: and unigram entropy within 5% of held-out text's (a low perplexity from repetition does not count)
ENTROPY_BAR = 0.05
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
            "entropy": unigram_entropy(tokens[:, len(prompt):]),
            # with --energy the energy model's calls count too (tokens_per_call)
            "tokens_per_nfe": sum(r["stats"].get("tokens_per_call", r["stats"]["tokens_per_nfe"]) for r in rows)
            / len(rows),
            "wall_s": round(time.perf_counter() - start, 1), "first_text": rows[0]["text"]}


def main(argv=None) -> int:
    torch.set_num_threads(1)
    held = heldout_windows(64, 256)
    heldout, heldout_entropy = generative_perplexity(held), unigram_entropy(held)
    rows = []
    examples = readme_text_examples()
    for command in examples + [c for c in OTHER if c not in examples]:
        r = run_example(command)
        r["ratio"] = r["gen_ppl"] / heldout
        r["entropy_off"] = abs(r["entropy"] - heldout_entropy) / heldout_entropy
        r["met"] = r["ratio"] <= BAR and r["entropy_off"] <= ENTROPY_BAR
        r["readme_example"] = command in examples
        rows.append(r)
        print(f"{r['gen_ppl']:.2f} ({r['ratio']:.2f}x) {r['tokens_per_nfe']:.2f} tok/call  {command}", flush=True)
    lines = [f"Held-out text (64 windows of 256): perplexity under `shakespeare-ar` {heldout:.2f}, unigram entropy "
             f"{heldout_entropy:.3f} nats; bar: generated text at most {BAR:g}x that perplexity, with unigram "
             f"entropy within {ENTROPY_BAR:.0%} (repetition lowers perplexity). {BATCH} samples per example."]
    for title, keep in (("README examples", True), ("Other configurations (not shown as README examples)", False)):
        lines += ["", f"{title}:", "", "| command | tokens per call | generative perplexity | ratio | unigram entropy "
                  "(off) | bar |", "|---|---|---|---|---|---|"]
        lines += [f"| `{r['command']}` | {r['tokens_per_nfe']:.2f} | {r['gen_ppl']:.2f} | {r['ratio']:.2f} | "
                  f"{r['entropy']:.3f} ({r['entropy_off']:.1%}) | {'met' if r['met'] else '**missed**'} |"
                  for r in rows if r["readme_example"] == keep]
    write_text(RESULTS / "decode_examples.json", json.dumps({"heldout_ppl": heldout, "heldout_entropy": heldout_entropy,
                                                            "bar": BAR, "entropy_bar": ENTROPY_BAR, "rows": rows},
                                                           indent=1))
    write_text(RESULTS / "decode_examples.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(math.isfinite(r["gen_ppl"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
