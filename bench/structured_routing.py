"""Denoising Task Routing (Park et al. 2023) on a small digits DiT -> bench/results/structured_routing.{json,md}.

    python bench/structured_routing.py           # 800 steps, seeds 0 and 1 (about 4 min on one core)
    python bench/structured_routing.py --quick   # 20 steps, one seed (seconds)

The same DiT (48 channels, depth 3, VP eps-prediction, batch 128, Adam 2e-3) trained from the
same initial weights, batches and noise for the same number of steps, plain and with DTR
masks (beta = 0.8; alpha = 1 and the authors' alpha = 4). Reported: the mean of the last 50
training losses, the denoising loss on fixed draws (all digits x 4 (t, eps)), and the FD of 512
samples (DPM-Solver++ 2M, 20 steps) to the real digits; the FD of two halves of the real digits
is the floor. Whether routing helps at this size is what the table says, nothing more.
"""
from __future__ import annotations

import json
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffinfer.atomic import write_text  # noqa: E402
from diffinfer.zoo import routing_digits as rd  # noqa: E402
from diffinfer.zoo.quality import fd_digits_floor  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CONFIGS = {"plain": None, "dtr": {"beta": 0.8, "alpha": 1.0}, "dtr-alpha4": {"beta": 0.8, "alpha": 4.0}}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    torch.set_num_threads(1)
    steps, seeds, n = (20, (0,), 64) if quick else (800, (0, 1), 512)
    start = time.time()
    rows = rd.compare(CONFIGS, steps=steps, seeds=seeds, n=n)
    floor = fd_digits_floor()
    summary = {}
    for name in CONFIGS:
        mine = [r for r in rows if r["name"] == name]
        summary[name] = {k: statistics.fmean(r[k] for r in mine) for k in ("final_loss", "eval_loss", "fd")}
        summary[name]["fd_worst"] = max(r["fd"] for r in mine)
    result = {"steps": steps, "seeds": list(seeds), "samples": n, "configs": CONFIGS, "dit": rd.DIT_KWARGS,
              "fd_floor_real_halves": floor, "rows": rows, "mean": summary,
              "seconds": round(time.time() - start, 1), "quick": quick}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / "structured_routing.json", json.dumps(result, indent=2) + "\n")
    lines = [f"# Denoising Task Routing on a small digits DiT ({steps} steps, seeds {list(seeds)})", "",
             f"FD floor (two halves of the real digits): {floor:.2f}", "",
             "| model | routing | train loss (last 50) | eval loss | FD (mean) | FD (worst seed) |",
             "|---|---|---|---|---|---|"]
    for name, routing in CONFIGS.items():
        s = summary[name]
        cfg = "off" if routing is None else f"beta {routing['beta']}, alpha {routing['alpha']}"
        lines.append(f"| {name} | {cfg} | {s['final_loss']:.4f} | {s['eval_loss']:.4f} | {s['fd']:.2f} | {s['fd_worst']:.2f} |")
    lines += ["", "Per seed:", "", "| model | seed | train loss | eval loss | FD |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['seed']} | {r['final_loss']:.4f} | {r['eval_loss']:.4f} | {r['fd']:.2f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    write_text(RESULTS / "structured_routing.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
