"""``diffinfer generate``: many samples, many processes, nothing lost.

A generation job draws rows ``0 .. n-1`` of one configuration (model, solver, steps,
seed, ...). Row ``i`` uses its own random stream ``(seed, i)`` (``diffinfer.rng``), and
the rows are cut into fixed shards of ``batch`` rows, ``[0, B), [B, 2B), ...``, each drawn
as one batch. A shard is therefore the same computation whichever process draws it, so
the union of the shards written by ``K`` processes is bitwise the output of one process
(a network whose kernels depend on the batch size sees the same batch either way).

- ``config``: ``GenerateConfig`` and the recorded configuration (``ConfigMismatch`` names
  the differing keys);
- ``models``: a model spec (zoo name, ``module:function``, ``diffusers:PATH``) -> a row drawer;
- ``store``: the output directory (``job.json``, atomic safetensors shards, per-rank
  manifests), ``load_rows`` and ``status``;
- ``run``: ``generate(config, out)``, the rank split (``RANK`` / ``WORLD_SIZE``) and progress.
"""
from .config import ConfigMismatch, GenerateConfig, shard_plan
from .run import generate, rank_env
from .store import format_status, load_rows, status

__all__ = ["GenerateConfig", "ConfigMismatch", "generate", "rank_env", "shard_plan", "load_rows", "status",
           "format_status"]
