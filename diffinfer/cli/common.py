"""Argument helpers shared by the subcommands: the input contract.

Every option is checked before any work starts: ``argparse`` types (``int_in``,
``float_in``) reject out-of-range and non-finite numbers while parsing, ``check_out``
rejects an output path that is a directory, lies under a file or cannot be written, and
each command checks model / task compatibility before loading anything. A bad value
gives one line (``diffinfer CMD: error: ...`` naming the value and what is valid) and
exit status 2 (``OneLineParser``, ``cli.main``)."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import sys
import tempfile

#: the most solver steps / decoding steps a command accepts (beyond it a run takes hours)
MAX_STEPS = 10_000
#: the most samples a command draws in one run
MAX_SAMPLES = 100_000
#: tokens the markov oracle decodes in one run (each step re-reads the whole canvas)
MAX_TOKENS = 4096


class UsageError(ValueError):
    """A command-line value outside what is valid (exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(text, kind, what):
    try:
        v = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    return v


def int_in(lo: int | None = None, hi: int | None = None):
    """An argparse type: an int in ``[lo, hi]``."""
    what = ("an integer" + (f" >= {lo}" if lo is not None and hi is None else "")
            + (f" in [{lo}, {hi}]" if lo is not None and hi is not None else "")
            + (f" <= {hi}" if lo is None and hi is not None else ""))

    def parse(text):
        v = _number(text, int, what)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v
    parse.__name__ = "int"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite float in the interval from ``lo`` to ``hi``."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    interval = f" in {left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{right}"
    what = "a finite number" + (interval if lo is not None or hi is not None else "")

    def parse(text):
        v = _number(text, float, what)
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v
    parse.__name__ = "float"
    return parse


positive_int = int_in(1)
seed_int = int_in(0, 2 ** 63 - 1)
steps_int = int_in(1, MAX_STEPS)
samples_int = int_in(1, MAX_SAMPLES)
finite_float = float_in()


def check_choice(option: str, value, valid) -> None:
    if value not in valid:
        raise UsageError(f"{option} {value!r} is not valid here; valid: {', '.join(map(str, valid))}")


def check_out(path, option: str = "--out") -> pathlib.Path | None:
    """An output file path that can be written: not a directory, in an existing directory
    we may create files in. Checked before any work starts."""
    if path is None:
        return None
    p = pathlib.Path(path)
    if str(path) == "" or p.is_dir() or str(path).endswith(os.sep):
        raise UsageError(f"{option} {str(path)!r} is a directory; give a file name (e.g. {p / 'out.png'})")
    parent = p.parent
    if not parent.exists():
        raise UsageError(f"{option} {str(path)!r}: the directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise UsageError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a directory")
    try:  # the one reliable test (root ignores permission bits; some file systems are read-only)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".check", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"{option} {str(path)!r}: cannot write in {str(parent)!r} ({e.strerror or e})") from None
    return p


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")


def progress_enabled(args) -> bool:
    value = getattr(args, "progress", None)
    if value is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(value)


@contextlib.contextmanager
def model_call_progress(args, desc: str, total: int | None = None):
    """A tqdm bar (stderr) counting the calls of the bundled networks (every architecture
    of ``zoo.ARCH_CLASSES``) while the block runs; yields the bar (or ``None`` when off)."""
    if not progress_enabled(args):
        yield None
        return
    import torch
    from tqdm.auto import tqdm

    from ..zoo.checkpoints import ARCH_CLASSES
    classes = {cls for _, cls in ARCH_CLASSES.values()}
    bar = tqdm(total=total, desc=desc, unit="call", dynamic_ncols=True, leave=False, file=sys.stderr)

    def hook(module, inputs, output):
        if type(module).__name__ in classes:
            bar.update(1)
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield bar
    finally:
        handle.remove()
        bar.close()


def write_text(path, text: str) -> None:
    """A text output, written atomically."""
    from ..atomic import write_text as _write
    _write(path, text)


def parse_options(pairs: list[str]) -> dict:
    """``["eta=1.0", "variant=bh1"]`` -> ``{"eta": 1.0, "variant": "bh1"}`` (JSON values where they parse)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"option {pair!r} is not KEY=VALUE")
        k, v = pair.split("=", 1)
        try:
            value = json.loads(v)
        except json.JSONDecodeError:
            value = v
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"option {pair!r}: the value must be finite")
        out[k.replace("-", "_")] = value
    return out
