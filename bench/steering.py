"""Tractable-model steering on digits inpainting (issue 19, item 6).

The bundled ``digits`` diffusion model inpaints the centred 4x4 hole (``task_operator
("inpaint")``, measurement noise 0.05, images in [-1, 1]) on the same images, masks and
measurements as ``bench/inverse.py`` (first ``n`` of a seed-0 permutation; ``y`` drawn with
seed 1). Compared by PSNR against the truth (on the whole image and on the hole):

- ``A^+ y`` (the hole left at 0) and the tractable model alone: the fitted mixture's exact
  conditional mean ``E[x_hole | y_obs]``;
- DPS, RED-Diff and projection with the CLI's settings (``zoo.tasks.restore_digits``);
- ``TractableSteering`` (``diffinfer.inverse_steering``) of the diffusion model by a
  scikit-learn ``GaussianMixture`` (``--components`` components, full covariances) fitted
  on the digits *not* among the test images, DDPM 50 steps: toward ``E[x0_hole | x_t, y_obs]``
  at weights 1 and 0.5, and toward ``E[x_hole | y_obs]`` at weight 0.5.

    python bench/steering.py            # about a minute on 2 CPU cores
    python bench/steering.py --quick    # 8 images

Writes ``bench/results/steering.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import diffinfer as di  # noqa: E402
from diffinfer import inverse  # noqa: E402
from diffinfer.atomic import write_text  # noqa: E402
from diffinfer.inverse_steering import TractableSteering, mixture_from_sklearn  # noqa: E402

NOISE = 0.05
STEER_STEPS = 50


def _psnr(out: torch.Tensor, x: torch.Tensor, hole: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB, peak-to-peak 2) over the image and over the hole pixels only."""
    from diffinfer.metrics import psnr
    d = (out - x)[:, hole.bool()]  # [B, hole pixels]
    mse_hole = (d * d).mean(1)
    hole_psnr = 10 * torch.log10(4.0 / mse_hole.clamp_min(1e-12))
    return round(float(psnr(out, x).mean()), 2), round(float(hole_psnr.mean()), 2)


def run(n: int, components: int) -> dict:
    from sklearn.mixture import GaussianMixture as SkGM

    from diffinfer import zoo
    from diffinfer.zoo.data import digits
    from diffinfer.zoo.tasks import restore_digits

    x_all, _ = digits()
    perm = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(0))
    x, train = x_all[perm[:n]], x_all[perm[n:]]  # the mixture never sees the test images
    t0 = time.perf_counter()
    gm = SkGM(components, covariance_type="full", reg_covar=1e-3, random_state=0, max_iter=200)
    gm.fit(train.reshape(train.shape[0], -1).double().numpy())
    mix = mixture_from_sklearn(gm)
    fit_s = round(time.perf_counter() - t0, 1)
    den = zoo.load("digits")
    op = inverse.task_operator("inpaint", den.shape, NOISE)
    y = op.measure(x, seed=1)  # [n, 1, 8, 8] (what restore_digits draws with seed 0)
    hole = 1 - op.mask
    rows = {}

    def record(name, fn, nfe=None):
        t = time.perf_counter()
        out, used = fn()
        full, inside = _psnr(out.clamp(-1, 1), x, hole)
        rows[name] = {"psnr": full, "psnr_hole": inside, "nfe": used if nfe is None else nfe,
                      "wall_s": round(time.perf_counter() - t, 1)}
        print(f"  {name}: {rows[name]}", flush=True)

    record("A^+ y", lambda: (op.pinv(y), 0))
    record(f"GMM-{components} conditional mean alone",
           lambda: (TractableSteering(den, mix, op.mask, y, target="conditional", noise_std=NOISE)
                    .predict(y, 0.5).x0.float(), 0), nfe=0)
    for method in inverse.METHODS:
        record(method, lambda: restore_digits("digits", "inpaint", method, x, NOISE, None, 0)[::3])
    for w, target in ((1.0, "posterior"), (0.5, "posterior"), (0.5, "conditional")):
        def steer(w=w, target=target):
            nfe0 = den.nfe
            st = TractableSteering(den, mix, op.mask, y, weight=w, target=target, noise_std=NOISE)
            out = di.sample(st, shape=tuple(x.shape), solver="ddpm", steps=STEER_STEPS, seed=0, dtype=x.dtype).x
            return out, den.nfe - nfe0
        record(f"steering (GMM-{components}, {target} target, weight {w}), ddpm {STEER_STEPS}", steer)
    return {"n": n, "noise_std": NOISE, "components": components, "gmm_fit_s": fit_s,
            "gmm_train_images": int(train.shape[0]), "rows": rows}


def markdown(res: dict) -> str:
    lines = ["# Tractable steering on digits inpainting", "",
             f"n={res['n']} digits, centred 4x4 hole, measurement noise {res['noise_std']}; "
             f"scikit-learn GaussianMixture, {res['components']} full-covariance components, fitted on the "
             f"{res['gmm_train_images']} other digits ({res['gmm_fit_s']} s). PSNR in dB (images in [-1, 1]).", "",
             "| method | NFE | PSNR | PSNR (hole) | wall s |", "|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        lines.append(f"| {name} | {r['nfe']} | {r['psnr']} | {r['psnr_hole']} | {r['wall_s']} |")
    lines += ["", f"total {res['total_wall_s']} s"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--components", type=int, default=16)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = run(8 if args.quick else 64, args.components)
    res["total_wall_s"] = round(time.perf_counter() - t0, 1)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "steering.json", json.dumps(res, indent=1))
    write_text(out / "steering.md", markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
