"""Per-sample random streams (docs/architecture.md: randomness is per sample).

Row ``i`` of a batch draws its initial noise and every step's noise from its own
``torch.Generator`` seeded by ``(seed, index_i)``, so a sample is bitwise the same
alone or in a batch, on one worker or many (give each worker its ``indices``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def stream_seed(seed: int, index: int) -> int:
    """A well-mixed 64-bit seed for stream ``index`` of ``seed`` (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed) & (2**63 - 1), int(index)]).generate_state(1, np.uint64)[0])


class SampleRNG:
    """One generator per row; ``select`` copies rows (for resampling and branching)."""

    def __init__(self, generators: list[torch.Generator], indices: list[int] | None = None):
        self.generators = generators
        self.indices = list(indices) if indices is not None else list(range(len(generators)))

    @classmethod
    def from_seed(cls, seed: int, batch: int | None = None, indices: Sequence[int] | None = None,
                  device: torch.device | str = "cpu") -> "SampleRNG":
        if indices is None:
            if batch is None:
                raise ValueError("give batch or indices")
            indices = range(batch)
        gens = []
        for i in indices:
            g = torch.Generator(device=device)
            g.manual_seed(stream_seed(seed, i))
            gens.append(g)
        return cls(gens, list(indices))

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype=torch.float32, device=None) -> Tensor:
        """``[B, *shape]`` standard normal noise, row ``b`` from stream ``b``."""
        device = device if device is not None else self.generators[0].device
        return torch.stack([torch.randn(tuple(shape), generator=g, dtype=dtype, device=device)
                            for g in self.generators])

    def randn_like(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"batch {x.shape[0]} but {len(self.generators)} random streams")
        return self.randn(x.shape[1:], dtype=x.dtype, device=x.device)

    def rand(self, shape: Sequence[int], dtype=torch.float32, device=None) -> Tensor:
        device = device if device is not None else self.generators[0].device
        return torch.stack([torch.rand(tuple(shape), generator=g, dtype=dtype, device=device)
                            for g in self.generators])

    def select(self, idx) -> "SampleRNG":
        """Rows ``idx`` (repeats allowed); each copy continues its source's stream."""
        idx = idx.tolist() if isinstance(idx, Tensor) else list(idx)
        gens = []
        for i in idx:
            g = torch.Generator(device=self.generators[i].device)
            g.set_state(self.generators[i].get_state())
            gens.append(g)
        return SampleRNG(gens, [self.indices[i] for i in idx])

    def fork(self, salt: int) -> "SampleRNG":
        """Fresh independent streams for the same rows (e.g. after resampling duplicates):
        row ``b`` reseeds from its own stream's next draw, ``salt`` and its position ``b``,
        so duplicates part ways and the result is still a function of the seed."""
        gens = []
        for pos, g in enumerate(self.generators):
            draw = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
            h = torch.Generator(device=g.device)
            h.manual_seed(stream_seed(draw ^ int(salt), pos))
            gens.append(h)
        return SampleRNG(gens, self.indices)


def make_rng(seed, batch: int, device) -> SampleRNG:
    """Streams for ``batch`` rows: ``seed`` an int (rows 0..B-1), or ``(seed, indices)``
    to give a worker rows ``indices`` of a larger run; ``None`` draws a seed from torch's
    global generator (so ``torch.manual_seed`` still reproduces); a ``SampleRNG`` of the
    right size passes through."""
    if isinstance(seed, SampleRNG):
        if len(seed) != batch:
            raise ValueError(f"rng has {len(seed)} streams for a batch of {batch}")
        return seed
    indices = None
    if isinstance(seed, tuple):
        seed, indices = seed
        indices = list(indices)
        if len(indices) != batch:
            raise ValueError(f"{len(indices)} stream indices for a batch of {batch}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return SampleRNG.from_seed(int(seed), batch=batch, indices=indices, device=device)
