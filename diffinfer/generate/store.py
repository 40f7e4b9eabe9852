"""The output directory of a generation job. Ranks share nothing but this directory, and
no two processes ever write the same file:

``DIR/job.json``
    the recorded configuration (``config``), its hash, the format, the plan (``n``, shard
    rows). Created once, atomically and only if absent (a complete temporary file is
    hard-linked to the name; ``link`` fails if another rank got there first), then only read.
``DIR/shards/rows-AAAAAAAAA-BBBBBBBBB.safetensors``
    rows ``[A, B)``, written by the one rank that owns the shard, atomically (a temporary
    beside it, ``fsync``, ``rename``): a shard file exists only complete, so its presence
    is the record that those rows are done. Metadata: the configuration hash and the rows.
    With ``--png`` / a text model, ``rows-A-B.png`` / ``rows-A-B.jsonl`` are written first.
``DIR/ranks/rank-R-of-K.json``
    rank ``R``'s manifest (its shards, the row ranges done, throughput, host, pid,
    ``finished``), rewritten atomically by that rank alone after each shard.

``status(DIR)`` reads all three; ``load_rows(DIR)`` returns the rows in order after checking
that every row is present exactly once and every shard belongs to the recorded job."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import tempfile
import time

import torch
from torch import Tensor

from ..atomic import TMP_SUFFIX, atomic_path, remove_stale_temporaries, write_text
from .config import FORMAT, ConfigMismatch, config_hash, differences, shard_plan

JOB, SHARDS, RANKS = "job.json", "shards", "ranks"
SHARD_RE = re.compile(r"^rows-(\d{9})-(\d{9})\.safetensors$")


def shard_name(a: int, b: int, suffix: str = ".safetensors") -> str:
    return f"rows-{a:09d}-{b:09d}{suffix}"


class NotAJobDirectory(ValueError):
    """``--out`` exists and holds something other than a generation job."""


def _ours(name: str) -> bool:
    """Entries a job directory may hold before ``job.json`` appears (a rank's temporary)."""
    return name in (JOB, SHARDS, RANKS) or (name.startswith(f".{JOB}.") and name.endswith(TMP_SUFFIX))


def read_job(out) -> dict | None:
    path = pathlib.Path(out) / JOB
    if not path.is_file():
        return None
    try:
        job = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NotAJobDirectory(f"{path} is not a readable job record ({e})") from None
    if not isinstance(job, dict) or job.get("format") != FORMAT or not isinstance(job.get("config"), dict):
        raise NotAJobDirectory(f"{path} is not a {FORMAT} job record")
    return job


def check_out_dir(out) -> None:
    """Refuse, before any work, an ``out`` that is a file or a directory holding anything
    but a generation job (``NotAJobDirectory``); a missing or empty directory is fine."""
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; give a directory")
    if not out.is_dir() or read_job(out) is not None:
        return
    foreign = sorted(p.name for p in out.iterdir() if not _ours(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise NotAJobDirectory(f"--out {str(out)!r} is not empty and holds no {JOB} (it has {shown}); "
                               f"give a new or empty directory")


def open_job(out, job: dict) -> bool:
    """Record ``job`` in ``out`` or check it against the recorded one; ``True`` if this call
    created the record. Refuses a directory holding anything else (``NotAJobDirectory``) and a
    different configuration (``ConfigMismatch``, naming the differing keys)."""
    out = pathlib.Path(out)
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    recorded = read_job(out)
    created = False
    if recorded is None:
        fd, tmp = tempfile.mkstemp(prefix=f".{JOB}.", suffix=TMP_SUFFIX, dir=out)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(job, indent=1, sort_keys=True))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, out / JOB)  # atomic create-if-absent: the first rank's record wins
                created = True
            except FileExistsError:
                pass
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        recorded = read_job(out)
    diff = differences(recorded["config"], job["config"])
    if diff:
        raise ConfigMismatch(str(out), diff)
    (out / SHARDS).mkdir(exist_ok=True)
    (out / RANKS).mkdir(exist_ok=True)
    return created


def done_shards(out) -> dict[tuple[int, int], pathlib.Path]:
    """``{(a, b): path}`` of the shard files present (each one complete, by construction)."""
    d = pathlib.Path(out) / SHARDS
    found = {}
    if d.is_dir():
        for p in d.iterdir():
            m = SHARD_RE.match(p.name)
            if m:
                found[(int(m.group(1)), int(m.group(2)))] = p
    return found


def write_shard(out, a: int, b: int, tensors: dict[str, Tensor], config_hash: str,
                image: Tensor | None = None, texts: list[str] | None = None) -> pathlib.Path:
    """Rows ``[a, b)`` as one safetensors file, atomically; its companions first."""
    from safetensors.torch import save
    d = pathlib.Path(out) / SHARDS
    path = d / shard_name(a, b)
    for suffix in (".safetensors", ".png", ".jsonl"):  # a killed earlier attempt's temporaries
        remove_stale_temporaries(d / shard_name(a, b, suffix))
    for name, t in tensors.items():
        if t.shape[0] != b - a:
            raise ValueError(f"shard {a}..{b}: {name} has {t.shape[0]} rows, expected {b - a}")
    if image is not None:
        from ..viz import save_image
        save_image(str(d / shard_name(a, b, ".png")), image)
    if texts is not None:
        write_text(d / shard_name(a, b, ".jsonl"),
                   "".join(json.dumps({"row": a + k, "text": s}) + "\n" for k, s in enumerate(texts)))
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={"config_hash": config_hash, "rows": f"{a}-{b}", "format": FORMAT})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def rank_path(out, rank: int, world_size: int) -> pathlib.Path:
    return pathlib.Path(out) / RANKS / f"rank-{rank}-of-{world_size}.json"


def write_rank(out, rank: int, world_size: int, record: dict) -> None:
    path = rank_path(out, rank, world_size)
    remove_stale_temporaries(path)
    write_text(path, json.dumps(record, indent=1, sort_keys=True))


def merge_ranges(ranges) -> list[list[int]]:
    """Sorted, touching ranges joined: ``[(0, 4), (4, 8), (12, 16)] -> [[0, 8], [12, 16]]``."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _plan(job: dict) -> list[tuple[int, int]]:
    return shard_plan(int(job["config"]["n"]), int(job["config"]["batch"]))


def status(out) -> dict:
    """What is done: ``rows_done`` / ``rows_total``, the done and missing row ranges, stray
    files, and each rank manifest (``ranks``)."""
    out = pathlib.Path(out)
    job = read_job(out)
    if job is None:
        raise FileNotFoundError(f"{str(out)!r} holds no {JOB}: not a generate output directory")
    plan = set(_plan(job))
    done = done_shards(out)
    good = sorted(r for r in done if r in plan)
    stray = sorted(str(done[r].name) for r in done if r not in plan)
    ranks = []
    for p in sorted((out / RANKS).glob("rank-*-of-*.json")):
        try:
            ranks.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            ranks.append({"file": p.name, "error": "unreadable"})
    n = int(job["config"]["n"])
    done_ranges = merge_ranges(good)
    missing, pos = [], 0
    for a, b in done_ranges:
        if a > pos:
            missing.append([pos, a])
        pos = b
    if pos < n:
        missing.append([pos, n])
    return {"dir": str(out), "config": job["config"], "rows_total": n, "rows_done": sum(b - a for a, b in good),
            "shards_total": len(plan), "shards_done": len(good), "done": done_ranges, "missing": missing,
            "stray": stray, "ranks": ranks}


def format_status(st: dict) -> str:
    """``status`` as the lines ``diffinfer generate --status`` prints."""
    c = st["config"]
    pct = 100.0 * st["rows_done"] / max(st["rows_total"], 1)
    lines = [f"{st['dir']}: {st['rows_done']}/{st['rows_total']} rows done ({pct:.1f}%), "
             f"{st['shards_done']}/{st['shards_total']} shards of {c['batch']} rows",
             f"model={c['model']} kind={c.get('kind')} solver={c.get('solver')} steps={c.get('steps')} "
             f"seed={c['seed']} diffinfer={c.get('diffinfer_version')}"]
    if st["missing"]:
        shown = ", ".join(f"{a}..{b}" for a, b in st["missing"][:8]) + (" ..." if len(st["missing"]) > 8 else "")
        lines.append(f"missing rows: {shown}")
    readable = [r for r in st["ranks"] if "error" not in r]
    latest = max(readable, key=lambda r: float(r.get("updated", 0)))["world_size"] if readable else None
    for r in st["ranks"]:
        if "error" in r:
            lines.append(f"{r['file']}: {r['error']}")
            continue
        age = time.time() - float(r.get("updated", 0))
        state = "finished" if r.get("finished") else f"not finished (last update {age:.0f}s ago)"
        if r["world_size"] != latest:
            state += f", an earlier launch with {r['world_size']} processes"
        rate = r.get("samples_per_s")
        lines.append(f"rank {r['rank']}/{r['world_size']}: {r['rows_done']}/{r['rows_assigned']} rows "
                     f"({r['rows_drawn']} drawn by its last run" + (f", {rate:.3g} samples/s" if rate else "")
                     + f"), {state}, host {r.get('host')} pid {r.get('pid')}")
    if st["stray"]:
        lines.append(f"stray shard files (not in this job's plan): {', '.join(st['stray'][:5])}")
    return "\n".join(lines)


def load_rows(out, allow_partial: bool = False) -> dict[str, Tensor]:
    """Every shard's tensors joined in row order: ``{"x": [n, ...]}`` or ``{"tokens": [n, L]}``.

    Checks that each shard file belongs to the recorded job (configuration hash, row range,
    row count) and that the shards cover ``0 .. n-1`` with every row exactly once; a missing
    range raises unless ``allow_partial`` (then only the rows present are returned, in order,
    with ``"rows"``: their indices)."""
    from safetensors import safe_open
    st = status(out)
    job = read_job(out)
    want = config_hash(job["config"])
    if st["stray"]:
        raise ValueError(f"{out}: shard files outside the job's plan: {', '.join(st['stray'][:5])}")
    if st["missing"] and not allow_partial:
        shown = ", ".join(f"{a}..{b}" for a, b in st["missing"][:8])
        raise ValueError(f"{out}: {st['rows_done']}/{st['rows_total']} rows done; missing rows {shown} "
                         f"(rerun the same command to finish)")
    parts: dict[str, list[Tensor]] = {}
    rows: list[Tensor] = []
    covered = torch.zeros(st["rows_total"], dtype=torch.int64)
    for (a, b), path in sorted(done_shards(out).items()):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("config_hash") != want or meta.get("rows") != f"{a}-{b}":
                raise ValueError(f"{path.name} does not belong to this job (hash {meta.get('config_hash')!r}, "
                                 f"rows {meta.get('rows')!r}; expected {want!r}, {a}-{b})")
            for k in f.keys():
                t = f.get_tensor(k)
                if t.shape[0] != b - a:
                    raise ValueError(f"{path.name}: {k} has {t.shape[0]} rows, expected {b - a}")
                parts.setdefault(k, []).append(t)
        covered[a:b] += 1
        rows.append(torch.arange(a, b))
    if bool((covered > 1).any()):
        raise ValueError(f"{out}: rows {torch.nonzero(covered > 1).flatten()[:10].tolist()} appear more than once")
    result = {k: torch.cat(v) for k, v in parts.items()}
    if allow_partial:
        result["rows"] = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
    return result
