"""Joint data-label diffusion (issue 19, item 4): classification by inpainting the label,
generation by inpainting the data (``diffinfer.jointlabel``).

Exact part: seeded random labelled Gaussian mixtures (``toys.joint_label.random_labelled_mixture``,
3-D, 5 components, 3 classes) with their exact joint denoiser on rectified flow.
- ``E[l | x, l_1]`` against the Bayes posterior ``p(y | x)`` on 500 exact ``x``;
- label inpainting with the data block held clean (per-block times, dpmpp-2m 20 steps), 1000
  draws at each of 4 points: the largest binomial z-score of the class frequencies against
  ``p(y | x)``; beside it replacement inpainting of the one-time joint model
  (``inverse.projection_sample`` on ``TiedJoint``, DDPM 50 steps; RePaint without resampling),
  which conditions on a noised copy of ``x`` and is biased;
- data inpainting with a clean one-hot label: 2000 samples of ``x | y = 0`` scored against the
  class-conditional mixture, beside the two-exact-sets floor (``toys.random_problem.floors``).

Digits part: the bundled joint model (``diffinfer/zoo/weights/digits-joint.safetensors``, a
``JointMLP`` trained by ``demos.jointlabel.save_digits_joint``) classifies the 180 held-out digits
by label inpainting, beside the bundled ``digits-classifier``; 100 class-conditional digits drawn
by data inpainting are labelled by ``digits-classifier``.

    python bench/structured_jointlabel.py            # under a minute on one core
    python bench/structured_jointlabel.py --quick    # 2 mixtures

Writes ``bench/results/structured_jointlabel.{json,md}``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffinfer import jointlabel as jl  # noqa: E402
from diffinfer.inverse import Inpaint, projection_sample  # noqa: E402
from diffinfer.process import RectifiedFlow  # noqa: E402
from diffinfer.toys.joint_label import random_labelled_mixture  # noqa: E402
from diffinfer.toys.random_problem import floors, score  # noqa: E402
from bench.results_io import write_results  # noqa: E402

F64 = torch.float64


def _z(freq, p, n):
    return float(((freq - p).abs() / ((p * (1 - p) + 1.0 / n) / n).sqrt()).max())


def exact_row(seed: int, n: int = 1000, n_gen: int = 2000) -> dict:
    toy = random_labelled_mixture(seed)
    proc = RectifiedFlow()
    joint = jl.JointDenoiser(toy.joint_net(proc), proc, toy.num_classes, prediction="x0")
    xs, _ = toy.sample(500, seed=seed + 1000)
    prob_err = float((jl.label_probabilities(joint, xs) - toy.bayes_posterior(xs)).abs().max())
    x, _ = toy.sample(4, seed=seed + 20)
    bayes = toy.bayes_posterior(x)
    xr = x.repeat_interleave(n, 0)

    def freqs(labels):
        return torch.nn.functional.one_hot(labels.argmax(1), toy.num_classes).to(F64).reshape(4, n, -1).mean(1)

    blocks = freqs(jl.inpaint_label(joint, xr, solver="dpmpp-2m", steps=20, seed=seed).x)
    tied = jl.TiedJoint(joint, (toy.dim,))
    mask = torch.cat([torch.ones(toy.dim), torch.zeros(toy.num_classes)]).to(F64)
    z = torch.cat([xr, torch.zeros(xr.shape[0], toy.num_classes, dtype=F64)], 1)
    rep = projection_sample(tied, Inpaint(mask), z, z.shape, solver="ddpm", steps=50, seed=seed).x[:, toy.dim:]
    replacement = freqs(rep)
    gen = jl.inpaint_data(joint, torch.zeros(n_gen, dtype=torch.long), (n_gen, toy.dim), solver="dpmpp-2m",
                          steps=20, seed=seed, dtype=F64).x
    target = toy.class_conditional(0)
    s, fl = score(gen, target), floors(target, n_gen)
    return {"seed": seed, "prob_max_abs_error": prob_err,
            "label_inpaint_max_z": _z(blocks, bayes, n), "label_inpaint_max_abs": float((blocks - bayes).abs().max()),
            "replacement_max_z": _z(replacement, bayes, n),
            "replacement_max_abs": float((replacement - bayes).abs().max()),
            "gen_mean": s["mean"], "gen_mean_floor": fl["mean"], "gen_cov": s["cov"], "gen_cov_floor": fl["cov"],
            "gen_sw": s["sw"], "gen_sw_floor": fl["sw"]}


def digits_row() -> dict:
    from diffinfer.demos.jointlabel import digits_figures, load_digits_joint
    joint, config = load_digits_joint()
    f = digits_figures(joint, sample_steps=20, seed=0)
    f.pop("samples")
    return {**f, "checkpoint_steps": config["steps"], "checkpoint_hidden": config["hidden"]}


def markdown(res: dict) -> str:
    lines = ["# Joint data-label diffusion (`bench/structured_jointlabel.py`)", "",
             "Exact joint denoiser of random labelled mixtures (3-D, 5 components, 3 classes), rectified flow. "
             "z: the largest binomial z-score of 1000 sampled labels per point against p(y | x) (4 points).", "",
             "| seed | max abs(E[l given x] - p(y given x)) | label inpainting (per-block times) max z | "
             "replacement (one time, DDPM 50) max z / max abs | x given y=0: mean err (floor) | cov err (floor) |",
             "|---|---|---|---|---|---|"]
    for r in res["exact"]:
        lines.append(f"| {r['seed']} | {r['prob_max_abs_error']:.1e} | {r['label_inpaint_max_z']:.2f} | "
                     f"{r['replacement_max_z']:.1f} / {r['replacement_max_abs']:.3f} | "
                     f"{r['gen_mean']:.3f} ({r['gen_mean_floor']:.3f}) | {r['gen_cov']:.3f} ({r['gen_cov_floor']:.3f}) |")
    d = res["digits"]
    lines += ["", f"Digits ({d['n_heldout']} held-out; joint MLP hidden {d['checkpoint_hidden']}, "
              f"{d['checkpoint_steps']} steps):", "",
              "| classifier | held-out accuracy |", "|---|---|",
              f"| joint model, E[l given x] (one call) | {d['joint_label_mean_accuracy']:.3f} |",
              f"| joint model, one sampled label (dpmpp-2m 20) | {d['joint_label_sampled_accuracy']:.3f} |",
              f"| digits-classifier (clean) | {d['digits_classifier_accuracy']:.3f} |", "",
              f"Class-conditional digits by data inpainting (100, dpmpp-2m 20): digits-classifier agrees with "
              f"the label on {d['generated_class_agreement']:.2f}.", "",
              f"Wall time {res['seconds']:.1f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = {"exact": [exact_row(s) for s in (range(2) if args.quick else range(4))], "digits": digits_row()}
    res["seconds"] = time.perf_counter() - t0
    write_results("structured_jointlabel", res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
