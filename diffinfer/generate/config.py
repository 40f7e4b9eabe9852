"""The configuration of a generation job, recorded once in the output directory.

A job is a pure function of its configuration: ``GenerateConfig`` (what the user chose)
plus what the run resolved (the model kind, per-model defaults, a fingerprint of the
weights, the package and torch versions). The recorded dict is compared key by key when
a run meets an existing directory: any difference refuses the run (``ConfigMismatch``
names every differing key with both values), since mixing shards of two configurations
would be silently wrong."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

#: the on-disk format of an output directory
FORMAT = "diffinfer-generate/1"
#: the most rows one job may have (the shard names hold 9 digits)
MAX_ROWS = 999_999_999


class ConfigMismatch(ValueError):
    """A run's configuration differs from the one recorded in its output directory."""

    def __init__(self, out, differences: dict):
        self.differences = differences
        parts = "; ".join(f"{k}: recorded {a!r}, now {b!r}" for k, (a, b) in sorted(differences.items()))
        super().__init__(f"{out} holds a job with a different configuration ({parts}); use a new --out "
                         f"directory, or rerun with the recorded values to resume it")


@dataclass(frozen=True)
class GenerateConfig:
    """What to draw.

    model: a bundled name (``diffinfer.zoo``, a toy such as ``ring2d``, ``markov``), a
        ``module:function`` returning a ``Denoiser`` (with ``.shape``, or give ``shape``) or a
        masked model (``logits``, ``mask_id``), or ``diffusers:PATH`` (a saved pipeline).
    n: rows ``0 .. n-1``; seed: row ``i`` uses stream ``(seed, i)``.
    solver / steps: the solver (continuous) or the unmasking policy (text) and its steps
        (``None``: the model kind's default).
    batch: rows per shard (and per model batch). Part of the configuration: with a network
        whose kernels depend on the batch size another ``batch`` changes the last bits.
    options: solver options (continuous) or ``mdm.decode`` keywords (text).
    label / guidance: digits models: a fixed class, or classifier-free guidance with row
        ``i`` conditioned on class ``i % 10`` (a function of the row index only).
    length: tokens per text row (default: the model's ``max_len``); shape: one sample's shape
        for a ``module:function`` denoiser without ``.shape``.
    png: also write an image grid beside each shard (image models).
    """

    model: str
    n: int
    seed: int = 0
    solver: str | None = None
    steps: int | None = None
    batch: int = 64
    options: dict = field(default_factory=dict)
    label: int | None = None
    guidance: float | None = None
    length: int | None = None
    shape: tuple | None = None
    png: bool = False

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        for name, lo in (("n", 1), ("batch", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.n > MAX_ROWS:
            raise ValueError(f"n must be at most {MAX_ROWS}, got {self.n}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.shape is not None:
            shape = tuple(self.shape)
            if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
                raise ValueError(f"shape must be positive integers, got {self.shape!r}")
            object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "options", dict(self.options or {}))

    def record(self) -> dict:
        """The user's choices as plain JSON values."""
        out = asdict(self)
        out["shape"] = list(self.shape) if self.shape is not None else None
        return out


def shard_plan(n: int, batch: int) -> list[tuple[int, int]]:
    """The shards of a job: ``[(0, B), (B, 2B), ..., (kB, n)]`` (the last one shorter)."""
    return [(a, min(a + batch, n)) for a in range(0, n, batch)]


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, allow_nan=False, separators=(",", ":"))


def config_hash(record: dict) -> str:
    """A short hash of the recorded configuration (stored in every shard's metadata)."""
    return hashlib.sha256(canonical(record).encode()).hexdigest()[:16]


def differences(recorded: dict, now: dict) -> dict:
    """``{key: (recorded value, new value)}`` for every key whose values differ."""
    keys = set(recorded) | set(now)
    return {k: (recorded.get(k), now.get(k)) for k in keys if recorded.get(k) != now.get(k)}
