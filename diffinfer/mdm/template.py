"""Structured-output scaffolding: schema scaffolding as in S^3 (Self-adaptive Schema
Scaffolding; Xiong et al. 2025, "Unveiling the potential of diffusion large language model in
controllable generation"). The fixed tokens of a template (for example a JSON skeleton) are
given and only the slots are masked, so a masked-diffusion model fills the slots with the whole
skeleton in view.

Slot-length adaptation (S^3's self-adaptive slots): a slot is given at its longest and may end
early with a null token (``null_id``, e.g. a pad or end-of-text token the model knows). Once a
slot's first null has nothing masked before it in the slot, the rest of the slot is filled with
nulls and frozen (no more model calls are spent on it), and ``values`` cuts the slot there."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .decode import DecodeResult, decode


_SLOT = re.compile(r"\{(\w+):(\d+)\}")


@dataclass
class Template:
    """``tokens`` ``[L]`` with ``mask_id`` at the slots; ``slots``: name -> (start, end)."""

    tokens: Tensor
    slots: dict[str, tuple[int, int]]

    @classmethod
    def from_text(cls, text: str, encode: Callable[[str], Sequence[int]], mask_id: int) -> "Template":
        """Parse ``text`` in which ``{name:N}`` marks a slot of ``N`` tokens, e.g.
        ``'{"name": "{name:8}", "age": {age:2}}'``; the rest is encoded with ``encode``."""
        ids: list[int] = []
        slots: dict[str, tuple[int, int]] = {}
        pos = 0
        for m in _SLOT.finditer(text):
            ids.extend(encode(text[pos:m.start()]))
            name, n = m.group(1), int(m.group(2))
            if n < 1:
                raise ValueError(f"slot {name!r} must have at least one token")
            if name in slots:
                raise ValueError(f"slot {name!r} appears twice")
            slots[name] = (len(ids), len(ids) + n)
            ids.extend([mask_id] * n)
            pos = m.end()
        ids.extend(encode(text[pos:]))
        if not slots:
            raise ValueError("the template has no slot; mark slots as {name:N}")
        return cls(torch.tensor(ids, dtype=torch.long), slots)

    def slot_ids(self) -> Tensor:
        """``[L]``: the index of each position's slot (in ``slots`` order), ``-1`` for the skeleton."""
        ids = torch.full_like(self.tokens, -1)
        for i, (s, e) in enumerate(self.slots.values()):
            ids[s:e] = i
        return ids

    def fill(self, model, null_id: int | None = None, **decode_options) -> DecodeResult:
        """Decode the slots (``decode(model, canvas=self.tokens, ...)``). With ``null_id`` a slot
        may end early: after its first null token (nothing masked before it in the slot) the rest
        of the slot is null (``decode(..., eos_id=null_id, segments=self.slot_ids())``)."""
        if null_id is None:
            return decode(model, canvas=self.tokens, **decode_options)
        if "eos_id" in decode_options or "segments" in decode_options:
            raise ValueError("null_id sets eos_id and segments; give neither")
        return decode(model, canvas=self.tokens, eos_id=int(null_id), segments=self.slot_ids(), **decode_options)

    def values(self, tokens: Tensor, decode_text: Callable[[Sequence[int]], str] | None = None,
               null_id: int | None = None) -> dict:
        """The slot contents of one decoded canvas ``[L]`` (ids, or text with ``decode_text``),
        each cut before its first ``null_id`` token when one is given."""
        out = {}
        for name, (s, e) in self.slots.items():
            ids = tokens[s:e].tolist()
            if null_id is not None and null_id in ids:
                ids = ids[: ids.index(null_id)]
            out[name] = decode_text(ids) if decode_text else ids
        return out
