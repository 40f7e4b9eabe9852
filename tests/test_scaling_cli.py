"""The ``scale`` command on the exact toy, and on bundled digits when their checkpoints exist."""
import pytest
import torch

from diffinfer.cli import main
from diffinfer.scaling import METHODS, run
from diffinfer.toys.tilted import tilted_example
from diffinfer import VP


@pytest.mark.parametrize("method", ["smc", "dts", "zero-order"])
def test_scale_command_prints_reward_nfe_and_verifier_calls(method, capsys, tmp_path):
    out = tmp_path / "s.png"
    assert main(["scale", "--model", "tilted", "--method", method, "--budget", "600", "--steps", "10",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "reward: mean=" in text and "NFE=" in text and "verifier_calls=" in text
    assert out.exists() and out.stat().st_size > 0


def test_every_method_stays_within_its_budget():
    prior, reward, _ = tilted_example()
    den = prior.denoiser(VP())
    for method in METHODS:
        res = run(method, den, reward, 500, (2,), steps=10, seed=0, dtype=torch.float64)
        assert 0 < res.cost <= 500, (method, res.cost)


def test_bad_names(capsys):
    assert main(["scale", "--model", "tilted", "--method", "nope"]) == 2
    assert "valid: best-of-n" in capsys.readouterr().err
    assert main(["scale", "--model", "nope"]) == 2


def test_digits_class_reward(tmp_path, capsys):
    from diffinfer import zoo
    try:
        zoo.load("digits"), zoo.load("digits-classifier")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"bundled digits checkpoints not available: {e}")
    out = tmp_path / "grid.png"
    assert main(["scale", "--model", "digits", "--method", "best-of-n", "--reward", "class:7", "--budget", "220",
                 "--steps", "10", "--n", "4", "--out", str(out)]) == 0
    assert "verifier_calls=20" in capsys.readouterr().out and out.exists()
