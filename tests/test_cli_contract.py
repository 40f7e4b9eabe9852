"""The command line's input contract (issue 15): every option checked before any work,
one line naming the bad value and what is valid (exit 2), project errors as one line
(exit 1), never a traceback unless --debug; atomic outputs; the API's edges."""
import json
import os
import pathlib

import pytest
import torch

from diffinfer import VP, Denoiser, zoo
from diffinfer.atomic import atomic_path, write_text
from diffinfer.cli import main
from diffinfer.loop import sample
from diffinfer.nets import MLPDenoiser
from diffinfer.toys import ring2d
from diffinfer.zoo import checkpoints


def cli(argv, capsys):
    """``(status, stdout, stderr)`` of ``diffinfer ARGV``, also when parsing exits."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, status=2, *needles):
    assert rc == status, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffinfer"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --- "silently wrong" and "tracebacks instead of one-line errors": each example of the issue ---
REJECTED = [
    # silently wrong before
    (["sample", "--model", "digits", "--n", "0"], "--n"),
    (["sample", "--model", "digits", "--steps", "0"], "--steps"),
    (["sample", "--model", "sunspots", "--n", "0"], "--n"),
    (["sample", "--model", "shakespeare-char", "--n", "0"], "--n"),
    (["sample", "--model", "shakespeare-char", "--n", "300"], "at most 256"),
    (["sample", "--model", "shakespeare-char", "--steps", "300"], "valid: 1..256"),
    (["sample", "--model", "shakespeare-char", "--solver", "ddim"], "--solver does not apply"),
    (["restore", "--steps", "0"], "--steps"),
    (["restore", "--n", "-1"], "--n"),
    (["bench", "solvers", "--n-eval", "0"], "--n-eval"),
    (["decode", "--temperature", "nan"], "--temperature"),
    (["decode", "--batch", "0"], "--batch"),
    (["decode", "--eos", "ab"], "--eos"),
    (["sample", "--model", "digits", "--n", "1"], "at least 2"),
    # tracebacks before
    (["demo", "--n", "-1"], "--n"),
    (["demo", "--n", "0"], "--n"),
    (["restore", "--n", "0"], "--n"),
    (["restore", "--index", "-1"], "--index"),
    (["forecast", "--n", "-1"], "--n"),
    (["scale", "--steps", "0"], "--steps"),
    (["decode", "--batch", "-1"], "--batch"),
    (["bench", "solvers", "--n-eval", "-1"], "--n-eval"),
    (["sample", "--model", "digits", "--n", "-1"], "--n"),
    (["restore", "--model", "sunspots"], "valid: digits, digits-flow"),
    (["restore", "--model", "digits-classifier"], "valid: digits, digits-flow"),
    (["forecast", "--model", "shakespeare-char"], "valid: sunspots"),
    (["sample", "--model", "digits", "--guidance", "inf"], "--guidance"),
    (["demo", "--guidance", "inf"], "--guidance"),
    (["sample", "--model", "ring2d", "--steps", "1000000000"], "--steps"),
    (["sample", "--model", "digits", "--n", "100000", "--steps", "10000"], "minutes"),
    (["decode", "--length", str(10 ** 9)], "--length"),
    (["decode", "--model", "shakespeare-char", "--length", str(10 ** 9)], "--length"),
    (["decode", "--model", "markov", "--length", "100000"], "--length"),
    (["forecast", "--horizon", "0"], "--horizon"),
    (["scale", "--model", "digits", "--budget", "1000000"], "--budget"),
    (["decode", "--model", "shakespeare-ar"], "valid: markov"),
    (["decode", "--block", "0"], "--block"),
    (["scale", "--model", "tilted", "--method", "smc", "--n", "4"], "--n applies"),
    (["scale", "--model", "tilted", "--length", "4"], "--length applies"),
    (["decode", "--steps", "4"], "--steps does not apply to --policy threshold"),
    (["decode", "--policy", "random", "--threshold", "0.5"], "--threshold applies"),
    (["decode", "--policy", "random", "--score", "margin"], "--score applies"),
    (["decode", "--model", "shakespeare-char", "--length", "1000"], "valid: --length 1..256"),
]


@pytest.mark.parametrize("argv,needle", REJECTED, ids=[" ".join(a) for a, _ in REJECTED])
def test_bad_values_are_one_line_errors_with_exit_2(argv, needle, capsys):
    rc, out, err = cli(argv, capsys)
    assert_one_line_error(rc, err, 2, needle)
    assert out == ""


def test_out_that_is_a_directory_is_refused_and_nothing_written(tmp_path, capsys):
    rc, out, err = cli(["sample", "--model", "ring2d", "--n", "10", "--steps", "2", "--out", tmp_path], capsys)
    assert_one_line_error(rc, err, 2, "is a directory")
    assert "wrote" not in out and list(tmp_path.iterdir()) == []
    assert not pathlib.Path(str(tmp_path) + ".png").exists()


def test_out_under_a_file_or_unwritable_directory(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for cmd in (["sample", "--model", "ring2d", "--n", "10", "--steps", "2"], ["forecast", "--n", "1", "--steps", "1"],
                ["restore", "--n", "1", "--steps", "1"], ["demo", "--n", "2", "--steps", "1"]):
        rc, out, err = cli([*cmd, "--out", f / "x.png"], capsys)
        assert_one_line_error(rc, err, 2, "is a file")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    target = ro / "x.png" if os.geteuid() != 0 else pathlib.Path("/proc/diffinfer-x.png")  # root ignores modes
    rc, out, err = cli(["sample", "--model", "ring2d", "--n", "10", "--steps", "2", "--out", target], capsys)
    assert_one_line_error(rc, err, 2, "cannot write")
    rc, out, err = cli(["sample", "--model", "ring2d", "--n", "10", "--out", tmp_path / "missing" / "x.png"], capsys)
    assert_one_line_error(rc, err, 2, "does not exist")


def test_restore_input_that_is_not_a_png(tmp_path, capsys):
    bad = tmp_path / "notpng.png"
    bad.write_text("not an image")
    rc, out, err = cli(["restore", "--input", bad, "--n", "1", "--steps", "1"], capsys)
    assert_one_line_error(rc, err, 2, "--input", "not a readable PNG")
    rc, out, err = cli(["restore", "--input", tmp_path / "missing.png", "--n", "1", "--steps", "1"], capsys)
    assert_one_line_error(rc, err, 2, "--input")


def test_text_sample_honours_n_and_steps(monkeypatch, capsys):
    from diffinfer.zoo import quality
    seen = {}

    def fake_sample_text(n, seed, steps):
        seen.update(n=n, steps=steps)
        return torch.zeros(n, 8, dtype=torch.long)
    monkeypatch.setattr(quality, "sample_text", fake_sample_text)
    monkeypatch.setattr(quality, "text_report", lambda tokens: {"gen_ppl": 1.0, "heldout_ppl": 1.0, "entropy": 0.0,
                                                                "heldout_entropy": 0.0})
    rc, out, err = cli(["sample", "--model", "shakespeare-char", "--n", "100", "--steps", "7"], capsys)
    assert rc == 0, err
    assert seen == {"n": 100, "steps": 7}


def test_text_sample_steps_reach_the_decoder():
    import importlib
    from diffinfer.zoo import quality
    decode_module = importlib.import_module("diffinfer.mdm.decode")
    calls = []
    original = decode_module.decode

    def spy(*args, **kwargs):
        res = original(*args, **kwargs)
        calls.append(kwargs["steps"])
        return res
    import unittest.mock
    with unittest.mock.patch.object(decode_module, "decode", spy):
        tokens = quality.sample_text(n=1, length=16, steps=4, seed=0)
    assert calls == [4] and tokens.shape == (1, 16)
    with pytest.raises(ValueError, match="steps must be in"):
        quality.sample_text(n=1, length=16, steps=0)


@pytest.mark.parametrize("model", ["sunspots", "digits"])
def test_progress_is_shown_for_bundled_models(model, capsys):
    rc, out, err = cli(["sample", "--model", model, "--n", "2", "--steps", "2", "--progress"], capsys)
    assert rc == 0 and "Traceback" not in err
    assert "2/2" in err or "call" in err, err


def test_progress_for_markov_decoding(capsys):
    rc, out, err = cli(["decode", "--length", "16", "--progress"], capsys)
    assert rc == 0 and "decode (threshold)" in err


def test_decode_json_is_one_document_or_json_lines(capsys):
    rc, out, err = cli(["decode", "--length", "12", "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)  # the whole output is one valid JSON document
    assert len(doc["text"]) == 12 and doc["stats"]["decoded_tokens"] == 12
    rc, out, err = cli(["decode", "--length", "12", "--json", "--batch", "3", "--prompt", "ab"], capsys)
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 3
    assert [json.loads(line)["sample"] for line in lines] == [0, 1, 2]
    assert all(json.loads(line)["text"].startswith("ab") and len(json.loads(line)["text"]) == 14 for line in lines)


# --- project errors: one line, exit 1; --debug shows the traceback ------------------------------
@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """A private copy of the zoo directory the commands read from."""
    monkeypatch.setattr(checkpoints, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(checkpoints, "_CACHE", {})
    return tmp_path


def test_corrupted_bundled_checkpoint_is_one_line(weights_dir, capsys):
    (weights_dir / "sunspots.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    rc, out, err = cli(["sample", "--model", "sunspots", "--n", "2", "--steps", "1"], capsys)
    assert_one_line_error(rc, err, 1, "could not be read")
    with pytest.raises(zoo.ZooError):
        main(["--debug", "sample", "--model", "sunspots", "--n", "2", "--steps", "1"])


def _mlp_checkpoint(path, kwargs, config_changes=(), drop=()):
    net = MLPDenoiser(2, hidden=8, depth=1)
    config = {"kind": "denoiser", "process": "vp", "prediction": "eps", "shape": [2],
              "networks": {"net": {"arch": "mlp", "kwargs": {"dim": 2, "hidden": 8, "depth": 1}}}}
    zoo.save_checkpoint(path, {"net": net}, config)
    # rewrite the metadata as a hand-edited or hostile file would
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config["networks"]["net"]["kwargs"] = kwargs
    config.update(dict(config_changes))
    for key in drop:
        config.pop(key)
    save_file(tensors, str(path), metadata={"config": json.dumps(config)})
    return path


@pytest.mark.parametrize("kwargs,drop,needle", [
    ({"dim": 2, "hidden": 8, "depth": 1, "bogus": 3}, (), "unknown arguments ['bogus']"),
    ({"dim": 2, "hidden": 10 ** 7, "depth": 4}, (), "would allocate"),
    ({"dim": 2, "hidden": "wide", "depth": 1}, (), "invalid arguments"),
    ({"dim": 2, "hidden": 8, "depth": 1}, ("shape",), "lacks ['shape']"),
    ({"dim": 2, "hidden": 16, "depth": 1}, (), "do not fit mlp"),
])
def test_checkpoint_metadata_is_validated_before_allocation(tmp_path, kwargs, drop, needle):
    path = _mlp_checkpoint(tmp_path / "m.safetensors", kwargs, drop=drop)
    with pytest.raises(zoo.ZooError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        zoo.from_checkpoint(path)


def test_hostile_bundled_metadata_is_one_line_in_the_cli(weights_dir, capsys):
    _mlp_checkpoint(weights_dir / "sunspots.safetensors", {"dim": 2, "hidden": 10 ** 8, "depth": 4})
    rc, out, err = cli(["sample", "--model", "sunspots", "--n", "2", "--steps", "1"], capsys)
    assert_one_line_error(rc, err, 1, "would allocate")
    _mlp_checkpoint(weights_dir / "sunspots.safetensors", {"dim": 2, "hidden": 8, "depth": 1, "huge": 1})
    rc, out, err = cli(["forecast", "--n", "1", "--steps", "1"], capsys)
    assert_one_line_error(rc, err, 1, "unknown arguments")


# --- atomic outputs -----------------------------------------------------------------------------
def test_atomic_write_keeps_the_old_file_on_failure_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "a.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with pytest.raises(IsADirectoryError):
        with atomic_path(tmp_path):
            pass


def test_images_and_checkpoints_are_written_atomically(tmp_path, capsys):
    rc, out, err = cli(["sample", "--model", "ring2d", "--n", "20", "--steps", "2", "--out", tmp_path / "s.png"], capsys)
    assert rc == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc, out, err = cli(["sample", "--model", "ring2d", "--n", "20", "--steps", "2", "--out", tmp_path / "s.pdf"], capsys)
    assert rc == 0 and (tmp_path / "s.pdf").read_bytes()[:4] == b"%PDF"
    zoo.save_checkpoint(tmp_path / "m.safetensors", {"net": MLPDenoiser(2, hidden=8, depth=1)},
                        {"kind": "denoiser", "process": "vp", "prediction": "eps", "shape": [2],
                         "networks": {"net": {"arch": "mlp", "kwargs": {"dim": 2, "hidden": 8, "depth": 1}}}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "s.pdf", "s.png"]


# --- API edges ----------------------------------------------------------------------------------
def test_sample_rejects_complex_integer_and_empty_x_T():
    den = ring2d().denoiser(VP())
    with pytest.raises(TypeError, match="real floating-point"):
        sample(den, x_T=torch.randn(4, 2, dtype=torch.complex64), steps=2)
    with pytest.raises(TypeError, match="real floating-point"):
        sample(den, x_T=torch.ones(4, 2, dtype=torch.int64), steps=2)
    with pytest.raises(ValueError, match="empty"):
        sample(den, x_T=torch.randn(0, 2), steps=2)
    with pytest.raises(ValueError, match="positive sizes"):
        sample(den, shape=(0, 2), steps=2)
    with pytest.raises(TypeError, match="dtype"):
        sample(den, shape=(3, 2), steps=2, dtype=torch.complex64)


@pytest.mark.parametrize("t", [1.5, -0.1, float("nan"), torch.tensor([0.5, float("nan")])])
def test_denoiser_views_reject_times_outside_0_1(t):
    den = Denoiser(lambda x, t: torch.zeros_like(x), VP())
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        den.x0(x, t)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        den.raw(x, t)
    assert den.nfe == 0
    assert torch.isfinite(den.x0(x, 0.5)).all() and torch.isfinite(den.x0(x, torch.tensor([0.0, 1.0]))).all()


def test_model_output_and_os_errors_are_one_line(monkeypatch, tmp_path, capsys):
    from diffinfer import viz
    from diffinfer.cli import sample as sample_cmd
    from diffinfer.denoiser import ModelOutputError
    from diffinfer.zoo import quality

    def broken(*args, **kwargs):
        raise ModelOutputError("network output at t=0.5 contains NaN or Inf")
    monkeypatch.setattr(quality, "sample_digits", broken)
    rc, out, err = cli(["sample", "--model", "digits", "--n", "2", "--steps", "1"], capsys)
    assert_one_line_error(rc, err, 1, "contains NaN or Inf")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(sample_cmd, "scatter_plot", disk_full)
    rc, out, err = cli(["sample", "--model", "ring2d", "--n", "10", "--steps", "1", "--out", tmp_path / "a.png"], capsys)
    assert_one_line_error(rc, err, 1, "No space left on device")
    assert not (tmp_path / "a.png").exists()
    with pytest.raises(OSError):
        main(["sample", "--model", "ring2d", "--n", "10", "--steps", "1", "--out", str(tmp_path / "a.png"), "--debug"])
