"""Scaling of ``diffinfer generate`` with the number of processes on this machine.

    python bench/generate.py [--n 384] [--steps 20] [--batch 32] [--repeats 2]

One job (``digits``, ``dpmpp-2m``) drawn by K = 1 and K = 2 processes, each started as
``torchrun`` would start it (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in the environment,
``OMP_NUM_THREADS=1``), into a fresh directory; the K's alternate over ``--repeats`` rounds.
Per run: the samples/s each process reports (drawing only: shards written, model load
excluded), their sum, the job's wall time from launch to the last exit (interpreter
start, model load and writes included) and the CPU time of all its processes (user +
system): on a machine shared with other jobs the wall-clock rates say how much of the
cores the job got, the CPU time how much work it did. Also: whether the K = 2 rows equal the K = 1 rows
bitwise, and the cost of a rerun that finds everything done (what resuming costs before
any drawing). Writes ``bench/results/generate.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

from diffinfer.generate import load_rows  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
RATE = re.compile(r"rank (\d+)/(\d+): drew (\d+) rows in ([0-9.]+)s = ([0-9.]+) samples/s")


def run_job(args, out: pathlib.Path, k: int) -> dict:
    """Launch ``k`` ranks of one job; their reported rates and the job's wall time."""
    cmd = [sys.executable, "-m", "diffinfer.cli", "generate", "--model", "digits", "--num-samples", str(args.n),
           "--batch", str(args.batch), "--steps", str(args.steps), "--solver", "dpmpp-2m", "--seed", "0",
           "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = []
    for r in range(k):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(k), LOCAL_RANK=str(r), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    ranks = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"rank failed: {stderr}")
        m = RATE.search(stdout)
        ranks.append({"rank": int(m.group(1)), "rows": int(m.group(3)), "seconds": float(m.group(4)),
                      "samples_per_s": float(m.group(5))})
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"k": k, "wall_s": wall, "cpu_s": cpu, "ranks": ranks, "sum_samples_per_s": sum(r["samples_per_s"] for r in ranks),
            "job_samples_per_s": args.n / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=384)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-generate-"))
    load_before = os.getloadavg()
    runs, rows = [], {}
    try:
        for rep in range(args.repeats):
            for k in ((1, 2) if rep % 2 == 0 else (2, 1)):
                out = tmp / f"k{k}-r{rep}"
                res = run_job(args, out, k)
                res["repeat"] = rep
                runs.append(res)
                rows.setdefault(k, load_rows(out)["x"])
                print(f"K={k} repeat {rep}: wall {res['wall_s']:.1f}s, per process "
                      f"{[round(r['samples_per_s'], 2) for r in res['ranks']]} samples/s", flush=True)
        bitwise = bool(torch.equal(rows[1], rows[2]))
        t0 = time.perf_counter()
        resume = run_job(args, tmp / "k2-r0", 2)  # everything is done: only start-up and the directory check
        resume_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    conditions = (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared with other "
                  f"jobs: load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; one thread per "
                  f"process (OMP_NUM_THREADS=1); torch {torch.__version__}")
    summary = {"n": args.n, "steps": args.steps, "batch": args.batch, "runs": runs, "bitwise_equal_k1_k2": bitwise,
               "resume_all_done_s": resume_s, "resume_rows_drawn": sum(r["rows"] for r in resume["ranks"]),
               "conditions": conditions}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generate.json").write_text(json.dumps(summary, indent=1))
    lines = [f"`python bench/generate.py --n {args.n} --steps {args.steps} --batch {args.batch} --repeats "
             f"{args.repeats}`: `digits`, `dpmpp-2m`, {args.steps} steps, {args.n} rows in shards of {args.batch}.",
             f"Conditions: {conditions}.", "",
             "| processes | repeat | samples/s per process (drawing) | sum over processes | job wall time (s) | "
             "job samples/s (incl. start-up) | job CPU time (s, all processes) |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["k"], r["repeat"])):
        per = ", ".join(f"{x['samples_per_s']:.2f}" for x in sorted(r["ranks"], key=lambda x: x["rank"]))
        lines.append(f"| {r['k']} | {r['repeat']} | {per} | {r['sum_samples_per_s']:.2f} | {r['wall_s']:.1f} | "
                     f"{r['job_samples_per_s']:.2f} | {r['cpu_s']:.1f} |")
    lines += ["", f"K = 2 rows equal the K = 1 rows bitwise: {'yes' if bitwise else 'NO'}.",
              f"A rerun of the finished job with 2 processes (the cost of resuming before any drawing: "
              f"interpreter start, model load, directory listing) took {resume_s:.1f}s and drew "
              f"{summary['resume_rows_drawn']} rows."]
    (RESULTS / "generate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
