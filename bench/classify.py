"""Likelihood uses of the bundled digits models: the diffusion classifier and denoised smoothing.

    python bench/classify.py [--quick]

- Diffusion classifier (Li et al. 2023, ``classify.DiffusionClassifier``) with the
  class-conditional ``digits`` model: accuracy on the first ``n`` digits, with shared
  (t, noise) pairs for every class, without and with adaptive pruning of classes, beside the
  clean ``digits-classifier``. Both models were trained on all 1,797 digits, so these are
  in-sample accuracies.
- Denoised smoothing (Carlini et al. 2023, ``classify.DenoisedSmoothing.certify``): one-shot
  ``digits`` denoiser + the clean classifier, Cohen et al.'s CERTIFY; certified accuracy at
  several L2 radii (pixels in [-1, 1], 64 of them) and the mean certified radius.

Writes ``bench/results/classify.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffinfer import zoo  # noqa: E402
from diffinfer.classify import ABSTAIN, DenoisedSmoothing, DiffusionClassifier  # noqa: E402
from diffinfer.zoo.data import digits  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
SCHEDULES = {"64 pairs, all classes": None, "pruned: 8 pairs x 10 classes, then 24 x 4": [(8, 4), (24, 1)]}
RADII = (0.0, 0.25, 0.5, 1.0)


def diffusion_classifier(n: int) -> list[dict]:
    base, clf = zoo.load("digits"), zoo.load("digits-classifier")
    x, y = digits()
    x, y = x[:n], y[:n]
    dc = DiffusionClassifier(lambda c: base.bind(label=torch.full((n,), c, dtype=torch.int64)), n_classes=10)
    rows = []
    with torch.no_grad():
        for name, prune in SCHEDULES.items():
            t0 = time.perf_counter()
            res = dc.classify(x, n_pairs=64, prune=prune, seed=0)
            rows.append({"method": f"diffusion classifier ({name})", "accuracy": float((res.labels == y).double().mean()),
                         "evaluations_per_image": float(res.pairs.sum()) / n, "seconds": time.perf_counter() - t0})
        rows.append({"method": "clean digits-classifier", "accuracy": float((clf.predict(x) == y).double().mean()),
                     "evaluations_per_image": 1.0, "seconds": 0.0})
    return rows


def smoothing(n: int, n_mc: int) -> list[dict]:
    base, clf = zoo.load("digits"), zoo.load("digits-classifier")
    x, y = digits()
    x, y = x[:n], y[:n]
    rows = []
    for sigma in (0.25, 0.5):
        t0 = time.perf_counter()
        cert = DenoisedSmoothing(base, clf.clean, sigma).certify(x, n0=32, n=n_mc, alpha=0.001, n_classes=10, seed=0)
        right = (cert.labels == y) & (cert.labels != ABSTAIN)
        row = {"sigma": sigma, "n": n, "n_mc": n_mc, "abstain": float((cert.labels == ABSTAIN).double().mean()),
               "mean_radius_correct": float(torch.where(right, cert.radius, torch.zeros_like(cert.radius)).mean()),
               "seconds": time.perf_counter() - t0}
        for r in RADII:
            row[f"certified_accuracy@{r}"] = float((right & (cert.radius >= r)).double().mean())
        rows.append(row)
    return rows


def markdown(dc_rows, sm_rows, seconds: float, quick: bool) -> str:
    lines = ["# Likelihood uses on digits", "", f"Command: `python bench/classify.py{' --quick' if quick else ''}` "
             f"({seconds:.0f} s). In-sample: the models were trained on all 1,797 digits.", "",
             "## Diffusion classifier (first images of `load_digits`)", "",
             "| method | accuracy | model evaluations per image |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['accuracy']:.3f} | {r['evaluations_per_image']:.0f} |" for r in dc_rows]
    lines += ["", "## Denoised smoothing (CERTIFY, alpha 0.001; L2 radius in pixel units of [-1, 1])", "",
              "| sigma | images | noisy copies | abstain | " + " | ".join(f"certified acc. @ {r}" for r in RADII)
              + " | mean radius (correct) |", "|---" * (5 + len(RADII)) + "|"]
    for r in sm_rows:
        lines.append(f"| {r['sigma']} | {r['n']} | {r['n_mc']} | {r['abstain']:.3f} | "
                     + " | ".join(f"{r[f'certified_accuracy@{q}']:.3f}" for q in RADII)
                     + f" | {r['mean_radius_correct']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few images (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dc_rows = diffusion_classifier(20 if args.quick else 200)
    sm_rows = smoothing(8 if args.quick else 100, 100 if args.quick else 500)
    seconds = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "classify.json").write_text(json.dumps({"diffusion_classifier": dc_rows, "smoothing": sm_rows,
                                                       "seconds": seconds, "quick": args.quick}, indent=1))
    (RESULTS / "classify.md").write_text(markdown(dc_rows, sm_rows, seconds, args.quick))
    print(markdown(dc_rows, sm_rows, seconds, args.quick))


if __name__ == "__main__":
    main()
