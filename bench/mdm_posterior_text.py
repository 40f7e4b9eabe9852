"""Restoring corrupted Shakespeare with the masked-diffusion prior (issue 18, item 3).

Held-out windows (``zoo.quality.heldout_windows``) are corrupted by a symmetric character
channel (each character replaced by one of the 81 others with probability ``eps``) and, in a
second problem, with a fraction of characters erased as well; ``mdm.restore`` restores them with
``shakespeare-char`` (loaded from the zoo at run time, so a retrained checkpoint is picked up by
re-running) by each method of ``mdm.RESTORE_METHODS``. The score is the character error rate
(CER) of the restoration against the clean text, next to the corrupted input's CER (erased
characters count as errors) and a strong classical baseline: the exact posterior under a
*bigram* Markov prior fitted on the training split (add-0.5 counts), by forward-backward
(``toys.hmm_posterior_marginals`` on a chain whose hidden state is the character), restored by
the per-character argmax of its marginals (``bigram-fb``) -- the minimum-expected-CER answer
under that prior -- and the same with a unigram prior (``unigram``: per-character MAP). Rows
``<method> (bigram prior)`` run the samplers with the bigram chain itself as the masked model
(exact conditionals; ``bigram-fb`` is then the exact answer), separating the samplers' error
from the model's.

    python bench/mdm_posterior_text.py          # a few minutes on one core
    python bench/mdm_posterior_text.py --quick  # under a minute

Writes ``bench/results/mdm_posterior_text.{json,md}``.
"""
from __future__ import annotations

import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.results_io import bench_args, write_results  # noqa: E402
from diffinfer.mdm import RESTORE_METHODS, channel_likelihood, character_error_rate, corrupt, restore  # noqa: E402
from diffinfer.toys import HiddenMarkovModel, hmm_posterior_marginals  # noqa: E402

EPS = 0.2
ERASE = 0.25
SEED = 0  # held-out windows and corruption, fixed before any run
BIGRAM_CHECK = ("tilt-greedy", "aps", "smc+rb", "loo")


def markov_baselines(n_tokens: int) -> dict:
    """``{name: HiddenMarkovModel}``: bigram and unigram character chains from the training split
    (add-0.5 counts), each hidden state emitting its own character."""
    from diffinfer.zoo.data import shakespeare_tokens

    train = shakespeare_tokens("train")
    counts = torch.full((n_tokens, n_tokens), 0.5, dtype=torch.float64)
    counts.index_put_((train[:-1], train[1:]), torch.ones(train.numel() - 1, dtype=torch.float64), accumulate=True)
    uni = torch.bincount(train, minlength=n_tokens).double() + 0.5
    uni = uni / uni.sum()
    eye = torch.eye(n_tokens, dtype=torch.float64)
    return {"bigram-fb": HiddenMarkovModel(counts / counts.sum(-1, keepdim=True), eye, initial=uni),
            "unigram": HiddenMarkovModel(uni.expand(n_tokens, -1), eye, initial=uni)}


def run(n_windows: int, length: int, n_particles: int, methods) -> dict:
    from diffinfer.zoo import load
    from diffinfer.zoo.quality import heldout_windows

    model = load("shakespeare-char")
    V = int(model.vocab_size) - 1
    clean = heldout_windows(n_windows, length, seed=SEED)  # [B, L]
    baselines = markov_baselines(V)
    g = torch.Generator().manual_seed(SEED + 1)
    rows, examples = [], {}
    for problem, erase in (("channel", 0.0), ("channel+erase", ERASE)):
        observed, erased = corrupt(clean, V, EPS, erase, generator=g)
        lik = channel_likelihood(observed, V, EPS, erased)  # [B, L, V]
        shown = torch.where(erased, torch.full_like(observed, model.vocab.encode("_")[0]), observed)
        rows.append({"problem": problem, "method": "corrupted", "cer": character_error_rate(shown, clean),
                     "seconds": 0.0})
        examples[problem] = {"clean": model.decode(clean[0]), "corrupted": model.decode(shown[0])}
        for name, hmm in baselines.items():
            t = time.perf_counter()
            restored = hmm_posterior_marginals(hmm, lik).argmax(-1)
            rows.append({"problem": problem, "method": name, "cer": character_error_rate(restored, clean),
                         "seconds": time.perf_counter() - t})
            examples[problem][name] = model.decode(restored[0])
        for method in methods:
            t = time.perf_counter()
            restored = restore(model, lik, method, seed=SEED, n_particles=n_particles)
            rows.append({"problem": problem, "method": method, "cer": character_error_rate(restored, clean),
                         "seconds": time.perf_counter() - t})
            examples[problem][method] = model.decode(restored[0])
        # the same samplers on the bigram chain as the masked prior (exact conditionals, and
        # `bigram-fb` is their exact answer): what the samplers lose, apart from the model
        for method in BIGRAM_CHECK:
            t = time.perf_counter()
            restored = restore(baselines["bigram-fb"], lik, method, seed=SEED, n_particles=n_particles)
            rows.append({"problem": problem, "method": f"{method} (bigram prior)",
                         "cer": character_error_rate(restored, clean), "seconds": time.perf_counter() - t})
        for r in rows:
            if r["problem"] == problem:
                print(f"{problem:14s} {r['method']:16s} CER {r['cer']:.4f} ({r['seconds']:.1f} s)", flush=True)
    return {"config": {"windows": n_windows, "length": length, "eps": EPS, "erase": ERASE, "seed": SEED,
                       "n_particles": n_particles, "model": "shakespeare-char (zoo, loaded at run time)"},
            "rows": rows, "examples": examples}


def markdown(res: dict) -> str:
    c = res["config"]
    lines = [f"# Restoring corrupted Shakespeare ({c['windows']} held-out windows of {c['length']} characters, "
             f"channel eps = {c['eps']}, erased fraction {c['erase']} in `channel+erase`)", "",
             "Character error rate against the clean text (lower is better). `smc+rb`: "
             f"{c['n_particles']} particles per window, per-character argmax of the Rao-Blackwellised marginals. "
             "`loo`: each character's argmax given the observed rest. `bigram-fb`: exact posterior "
             "marginals under a bigram prior from the training split (forward-backward), argmax. "
             "`(bigram prior)`: the sampler on that bigram chain as the masked model.", "",
             "| method | " + " | ".join(p for p in res["examples"]) + " | seconds |",
             "|---|" + "---|" * (len(res["examples"]) + 1)]
    methods = list(dict.fromkeys(r["method"] for r in res["rows"]))
    for m in methods:
        sel = {r["problem"]: r for r in res["rows"] if r["method"] == m}
        lines.append(f"| {m} | " + " | ".join(f"{sel[p]['cer']:.4f}" for p in res["examples"]) +
                     f" | {sum(r['seconds'] for r in sel.values()):.1f} |")
    for p, ex in res["examples"].items():
        lines += ["", f"First window, `{p}` (erased characters shown as `_`):", ""]
        lines += [f"- {k}: `{v!r}`" for k, v in ex.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = bench_args(__doc__, argv, quick="4 windows of 32 characters")
    methods = [m for m in RESTORE_METHODS if m != "smc"]  # smc+rb reports the same particles, better
    res = run(4, 32, 8, methods) if args.quick else run(16, 64, 16, methods)
    write_results("mdm_posterior_text_quick" if args.quick else "mdm_posterior_text", res, markdown(res), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
