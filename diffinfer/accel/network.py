"""Network-level helpers shared by the accel transforms: a model view over another
network, and parameter counts."""
from __future__ import annotations

from torch import nn

from ..denoiser import Denoiser


def replace_network(den: Denoiser, net) -> Denoiser:
    """A copy of ``den`` (process, prediction type, time input, conditioning, checks) that
    calls ``net`` instead of ``den.net``; a fresh NFE counter. Zoo attributes (``config``,
    ``shape``) are carried over."""
    if not isinstance(den, Denoiser):
        raise TypeError(f"den must be a Denoiser (a network with its process), got {type(den).__name__}")
    new = Denoiser(net, den.process, den.prediction, den.time_input, den.cond, den.check, den.default_ts,
                   den._data_scale)
    for attr in ("config", "shape"):
        if hasattr(den, attr):
            setattr(new, attr, getattr(den, attr))
    return new


def count_parameters(net: nn.Module) -> int:
    """The number of parameter entries of ``net``."""
    return sum(p.numel() for p in net.parameters())
