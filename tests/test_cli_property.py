"""Property-based test of the command line (issue 15): random option values for every
subcommand; the exit status is 0 or 2, never a traceback; a value outside what is valid
is always refused (status 2, one line naming it), never replaced by something else; a
run that succeeds echoes the values it was given. Model work stays tiny (toys, a few
steps, a couple of samples); values that would do real work are in the rejected set."""
import json
import math
import os
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from diffinfer.cli import main

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                database=None)

JUNK = ["nan", "inf", "-inf", "1e400", "abc", "", "1.5", "0x10", "--", "1e3"]


def run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def int_opt(lo, hi, small):
    """(text, valid): valid ints drawn from [lo, small], invalid ones outside [lo, hi] or not ints."""
    valid = st.integers(lo, small).map(lambda v: (str(v), True))
    below = st.integers(lo - 10 ** 12, lo - 1).map(lambda v: (str(v), False))
    above = st.integers(hi + 1, hi + 10 ** 12).map(lambda v: (str(v), False)) if hi is not None else st.nothing()
    junk = st.sampled_from(JUNK).map(lambda v: (v, False))
    return st.one_of(valid, valid, below, above, junk)


def float_opt(lo, hi, small_lo=None, small_hi=None, lo_open=False):
    small_lo = lo if small_lo is None else small_lo
    valid = st.floats(small_lo, small_hi, allow_nan=False, allow_infinity=False,
                      exclude_min=lo_open).map(lambda v: (repr(v), True))
    bad = [("nan", False), ("inf", False), ("-inf", False), ("abc", False)]
    if lo is not None:
        bad.append((repr(lo - 1.0), False))
    if hi is not None:
        bad.append((repr(hi + 1.0), False))
    return st.one_of(valid, valid, st.sampled_from(bad))


def choice_opt(valid, invalid=("nope",)):
    return st.one_of(st.sampled_from([(v, True) for v in valid]), st.sampled_from([(v, False) for v in invalid]))


def options(table):
    """A random subset of the options of ``table`` with random values: ``[(flag, text, valid)]``."""
    return st.fixed_dictionaries({}, optional={k: v for k, v in table.items()}).map(
        lambda d: [(k, text, ok) for k, (text, ok) in d.items()])


def argv_of(base, opts):
    argv = list(base)
    for flag, text, _ in opts:
        argv += [flag, text] if not text.startswith("-") or text in ("--",) else [f"{flag}={text}"]
    return argv


def check(rc, out, err, opts):
    event(f"exit {rc}")
    assert rc in (0, 2), (rc, err)
    assert "Traceback" not in err and "Traceback" not in out
    if rc == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("diffinfer") and "error" in lines[0], err
    if not all(ok for _, _, ok in opts):
        bad = [(f, t) for f, t, ok in opts if not ok]
        assert rc == 2, f"accepted invalid values {bad}: {out}"
        assert any(f.lstrip("-") in err or repr(t) in err for f, t in bad), err
    return rc == 0


TOY = {"--model": choice_opt(["ring2d", "molrg"], ["ring3d", "digits-classifier"]),
       "--n": int_opt(1, 100_000, 40), "--steps": int_opt(1, 10_000, 4),
       "--solver": choice_opt(["euler", "ddim", "heun", "dpmpp-2m", "unipc"], ["nope", "dpmpp"]),
       "--process": choice_opt(["vp", "ve", "rectified-flow"], ["vq"]),
       "--seed": int_opt(0, 2 ** 63 - 1, 10 ** 6), "--label": st.sampled_from([("3", False)]),
       "--guidance": st.sampled_from([("1.0", False), ("inf", False)])}


@settings(max_examples=60, **SETTINGS)
@given(opts=options(TOY))
def test_sample_toys(opts, capsys):
    rc, out, err = run(argv_of(["sample", "--model", "ring2d", "--n", "20", "--steps", "2"], opts), capsys)
    if check(rc, out, err, opts):
        given_ = {f: t for f, t, _ in opts}
        assert f"steps={given_.get('--steps', '2')}" in out
        assert f"solver={given_.get('--solver', 'dpmpp-2m')}" in out


DECODE = {"--length": int_opt(1, 4096, 12), "--batch": int_opt(1, 1024, 3),
          "--temperature": float_opt(0.0, 100.0, 0.0, 2.0), "--top-k": int_opt(1, None, 8),
          "--top-p": float_opt(0.0, 1.0, 0.0, 1.0, lo_open=True), "--threshold": float_opt(0.0, 1.0, 0.0, 1.0),
          "--eos": choice_opt(["a", "h"], ["ab", "z", "xy"]), "--seed": int_opt(0, 2 ** 63 - 1, 100),
          "--policy": choice_opt(["threshold", "random", "low-confidence", "entropy"], ["greedy?"]),
          "--cfg": float_opt(0.0, 100.0, 0.0, 2.0), "--block": choice_opt(["none", "4"], ["0", "-2", "x"]),
          "--prompt": choice_opt(["", "ab", "hgf"], ["xyz", "A"])}


@settings(max_examples=60, **SETTINGS)
@given(opts=options(DECODE))
def test_decode_markov(opts, capsys):
    rc, out, err = run(argv_of(["decode", "--model", "markov", "--length", "8", "--json"], opts), capsys)
    if check(rc, out, err, opts):
        given_ = {f: t for f, t, _ in opts}
        lines = out.splitlines()
        assert len(lines) == int(given_.get("--batch", "1"))
        length = int(given_.get("--length", "8")) + len(given_.get("--prompt", ""))
        for line in lines:
            assert len(json.loads(line)["text"]) == length


SCALE = {"--model": choice_opt(["tilted", "ring2d"], ["shakespeare-ar", "sunspots"]),
         "--method": choice_opt(["smc", "best-of-n"], ["nope"]), "--budget": int_opt(1, 1_000_000, 60),
         "--steps": int_opt(1, 10_000, 3), "--n": int_opt(1, 4096, 4), "--lam": float_opt(None, None, -2.0, 2.0),
         "--seed": int_opt(0, 2 ** 63 - 1, 100)}


@settings(max_examples=30, **SETTINGS)
@given(opts=options(SCALE))
def test_scale_toys(opts, capsys):
    rc, out, err = run(argv_of(["scale", "--model", "tilted", "--budget", "40", "--steps", "3"], opts), capsys)
    if check(rc, out, err, opts):
        given_ = {f: t for f, t, _ in opts}
        assert f"budget={given_.get('--budget', '40')} steps={given_.get('--steps', '3')}" in out


RESTORE = {"--n": int_opt(1, 256, 2), "--steps": int_opt(1, 10_000, 2), "--index": int_opt(0, 1796, 1796),
           "--noise": float_opt(0.0, 10.0, 0.0, 0.5), "--scale": float_opt(0.0, None, 0.0, 1.0),
           "--task": choice_opt(["inpaint", "superres", "deblur", "mri"], ["denoise"]),
           "--method": choice_opt(["dps", "reddiff", "projection"], ["magic"]),
           "--model": choice_opt(["digits", "digits-flow"], ["sunspots", "digits-classifier", "shakespeare-char"])}


@settings(max_examples=12, **SETTINGS)
@given(opts=options(RESTORE))
def test_restore(opts, capsys):
    rc, out, err = run(argv_of(["restore", "--n", "1", "--steps", "1"], opts), capsys)
    if check(rc, out, err, opts):
        given_ = {f: t for f, t, _ in opts}
        assert f"n={given_.get('--n', '1')}" in out


FORECAST = {"--n": int_opt(1, 100_000, 2), "--steps": int_opt(1, 10_000, 2), "--horizon": int_opt(1, 31, 31),
            "--scale": float_opt(0.0, None, 0.0, 8.0), "--t-max": float_opt(0.0, 1.0, 0.0, 1.0),
            "--method": choice_opt(["tsdiff", "tsdiff-refine"], ["arima"]),
            "--model": choice_opt(["sunspots"], ["digits", "shakespeare-char"]),
            "--loss": choice_opt(["mse"], ["l7"])}


@settings(max_examples=10, **SETTINGS)
@given(opts=options(FORECAST))
def test_forecast(opts, capsys):
    rc, out, err = run(argv_of(["forecast", "--n", "1", "--steps", "1"], opts), capsys)
    if check(rc, out, err, opts):
        given_ = {f: t for f, t, _ in opts}
        assert f"horizon={given_.get('--horizon', '24')} n={given_.get('--n', '1')}" in out


BUNDLED = {"--model": choice_opt(["digits", "digits-flow", "sunspots", "shakespeare-char"],
                                 ["digits-classifier", "shakespeare-ar", "gpt2"]),
           "--n": st.one_of(st.sampled_from([("0", False), ("-1", False), ("nan", False), ("100001", False)])),
           "--steps": st.sampled_from([("0", False), ("-5", False), ("1000000000", False), ("2.5", False)]),
           "--guidance": st.sampled_from([("inf", False), ("nan", False)])}


@settings(max_examples=12, **SETTINGS)
@given(opts=options(BUNDLED).filter(lambda o: not all(ok for _, _, ok in o)))
def test_sample_bundled_rejections(opts, capsys):
    rc, out, err = run(argv_of(["sample", "--model", "digits"], opts), capsys)
    check(rc, out, err, opts)


DEMO = {"--n": int_opt(2, 100_000, 3), "--steps": int_opt(1, 10_000, 1),
        "--guidance": float_opt(None, None, 0.0, 3.0), "--solvers": choice_opt(["ddim"], ["nope"]),
        "--model": choice_opt(["digits"], ["sunspots"])}


@settings(max_examples=8, **SETTINGS)
@given(opts=options(DEMO))
def test_demo(opts, capsys):
    with tempfile.TemporaryDirectory() as d:
        argv = argv_of(["demo", "--n", "2", "--steps", "1", "--solvers", "ddim", "--out", os.path.join(d, "d.png")],
                       opts)
        rc, out, err = run(argv, capsys)
        if check(rc, out, err, opts):
            assert os.path.exists(os.path.join(d, "d.png"))


TRAIN = {"--steps": int_opt(1, 10_000_000, 1), "--threads": int_opt(1, 1024, 1),
         "--checkpoint-every": st.one_of(st.sampled_from([("1", True), ("5m", True), ("30s", True)]),
                                         st.sampled_from([("0", False), ("-1", False), ("soon", False), ("nan", False)])),
         "name": choice_opt(["sunspots"], ["gpt2", "digitz"])}


@settings(max_examples=8, **SETTINGS)
@given(opts=options(TRAIN))
def test_train(opts, capsys):
    name = next((t for f, t, _ in opts if f == "name"), "sunspots")
    opts_ = [o for o in opts if o[0] != "name"]
    steps = next((t for f, t, _ in opts_ if f == "--steps"), None)
    if steps is None:
        opts_.append(("--steps", "1", True))
    with tempfile.TemporaryDirectory() as d:
        argv = argv_of(["train", name, "--quiet", "--out", os.path.join(d, "m"), "--work-dir", os.path.join(d, "w")],
                       opts_)
        rc, out, err = run(argv, capsys)
        if check(rc, out, err, opts):
            assert f"wrote {os.path.join(d, 'm', name + '.safetensors')}" in out


@settings(max_examples=6, **SETTINGS)
@given(value=st.sampled_from(["0", "-1", "nan", "x", "1000001", "-99999999"]))
def test_bench_rejections(value, capsys):
    rc, out, err = run(["bench", "solvers", f"--n-eval={value}"], capsys)
    check(rc, out, err, [("--n-eval", value, False)])
