"""``generate(config, out)``: draw this process's share of a job's rows into ``out``.

The split (no communication between processes, no process group): rows are cut into
fixed shards ``[0, B), [B, 2B), ...`` (``B = config.batch``; the last one shorter) and
shard ``j`` belongs to rank ``j mod K`` (a stride over shards), ``RANK`` / ``WORLD_SIZE``
read from the environment as ``torchrun`` and ``accelerate launch`` set them (a plain run is
rank 0 of 1). Each rank skips its shards already on disk, so a rerun with the same
configuration, with any number of processes, completes exactly the missing rows; because
every rank progresses at the same rate, the shards a crash leaves undone are spread evenly
over the ranks of the rerun. ``LOCAL_RANK`` is recorded (a ``module:function`` factory
may read it to place its model on a device)."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass

from .. import __version__
from .config import FORMAT, GenerateConfig, canonical, config_hash, shard_plan
from .models import resolve
from .store import check_out_dir, done_shards, merge_ranges, open_job, write_rank, write_shard


def rank_env(environ=None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
    (defaults ``0, 1, 0``), checked."""
    env = os.environ if environ is None else environ
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = env.get(name)
        try:
            values[name] = default if text in (None, "") else int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def assigned(plan, rank: int, world_size: int):
    """The shards of ``rank``: every ``world_size``-th, starting at ``rank``."""
    return plan[rank::world_size]


@dataclass
class GenerateReport:
    rank: int
    world_size: int
    rows_assigned: int
    rows_skipped: int
    rows_drawn: int
    seconds: float
    load_seconds: float
    out: str

    @property
    def samples_per_s(self) -> float:
        return self.rows_drawn / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"rank {self.rank}/{self.world_size}: drew {self.rows_drawn} rows in {self.seconds:.2f}s "
                f"= {self.samples_per_s:.2f} samples/s per process ({self.rows_skipped} of its "
                f"{self.rows_assigned} rows were already done; model load {self.load_seconds:.2f}s)")


def job_record(config: GenerateConfig, drawer) -> dict:
    """What ``job.json`` records: the configuration with the model's resolved defaults,
    its weights' fingerprint and the versions (all compared on a rerun)."""
    import torch
    record = config.record()
    record.update(drawer.resolved)
    record["model_fingerprint"] = drawer.fingerprint
    record["diffinfer_version"] = __version__
    record["torch_version"] = torch.__version__
    record = json.loads(canonical(record))  # JSON values only (tuples -> lists), as read back
    return {"format": FORMAT, "config": record, "config_hash": config_hash(record),
            "shards": len(shard_plan(config.n, config.batch))}


def generate(config: GenerateConfig, out, *, rank: int | None = None, world_size: int | None = None,
             progress: bool = False, log=None) -> GenerateReport:
    """Draw this rank's missing shards of ``config`` into the directory ``out``.

    ``rank`` / ``world_size`` default to the environment's (``rank_env``). Raises
    ``ConfigMismatch`` if ``out`` holds a job with another configuration and
    ``store.NotAJobDirectory`` if it holds anything else. ``log`` (default: ``print`` to
    stdout) gets the final throughput line. Returns a ``GenerateReport``."""
    import torch
    env_rank, env_world, local_rank = rank_env()
    rank = env_rank if rank is None else int(rank)
    world_size = env_world if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    check_out_dir(out)  # cheap checks before the model loads
    t_load = time.perf_counter()
    drawer = resolve(config)
    job = job_record(config, drawer)
    open_job(out, job)
    load_seconds = time.perf_counter() - t_load

    mine = assigned(shard_plan(config.n, config.batch), rank, world_size)
    done = done_shards(out)
    todo = [s for s in mine if s not in done]
    finished = [s for s in mine if s in done]
    rows_assigned = sum(b - a for a, b in mine)
    rows_skipped = sum(b - a for a, b in finished)
    base = {"rank": rank, "world_size": world_size, "local_rank": local_rank, "host": socket.gethostname(),
            "pid": os.getpid(), "config_hash": job["config_hash"], "rows_assigned": rows_assigned,
            "shards": [list(s) for s in mine], "started": time.time()}

    def manifest(drawn: int, seconds: float, finished_run: bool):
        write_rank(out, rank, world_size, {**base, "done": merge_ranges(finished),
                                           "rows_done": sum(b - a for a, b in finished), "rows_drawn": drawn,
                                           "seconds": seconds, "samples_per_s": drawn / seconds if seconds > 0 else None,
                                           "finished": finished_run, "updated": time.time()})

    manifest(0, 0.0, not todo)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=rows_assigned, initial=rows_skipped, desc=f"rank {rank}/{world_size}", unit="sample",
                   position=rank, dynamic_ncols=True, leave=True, file=sys.stderr)
    drawn, start = 0, time.perf_counter()
    try:
        for a, b in todo:
            rows = list(range(a, b))
            with torch.no_grad():
                tensors = drawer.draw(rows)
            image = drawer.image(tensors["x"]) if config.png and drawer.image is not None else None
            texts = drawer.texts(tensors["tokens"]) if drawer.texts is not None and "tokens" in tensors else None
            write_shard(out, a, b, tensors, job["config_hash"], image=image, texts=texts)
            finished.append((a, b))
            drawn += b - a
            manifest(drawn, time.perf_counter() - start, len(finished) == len(mine))
            if bar is not None:
                bar.update(b - a)
    finally:
        if bar is not None:
            bar.close()
    report = GenerateReport(rank, world_size, rows_assigned, rows_skipped, drawn, time.perf_counter() - start,
                            load_seconds, str(out))
    (log or print)(report.line())
    return report
