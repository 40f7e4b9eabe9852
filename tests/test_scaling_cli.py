"""The ``scale`` command on the exact toy, and on bundled digits and text models when their
checkpoints exist (text: relations only, since the bundled model may be retrained)."""
import re

import pytest
import torch

from diffinfer.cli import main
from diffinfer.scaling import METHODS, run
from diffinfer.toys.tilted import tilted_example
from diffinfer import VP


@pytest.mark.parametrize("method", ["smc", "dts", "zero-order", "guided-search"])
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


def test_every_listed_method_is_registered_and_unknown_names_list_the_valid_ones():
    from diffinfer.scaling.budget import SIZED
    assert set(METHODS) == set(SIZED.names()) and len(METHODS) == len(SIZED)
    prior, reward, _ = tilted_example()
    with pytest.raises(ValueError, match="unknown scaling method 'nope'; valid: best-of-n"):
        run("nope", prior.denoiser(VP()), reward, 500, (2,))


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
    # gradient guidance under the command's no_grad: the class reward is differentiated inside;
    # 1 proposal (4 guided steps: 8 + 2 * 4 NFE, 1 + 3 * 4 calls), then (100 - 29) // 10 = 7 rounds
    # of 1 x 2 copies (4 NFE + 1 call each)
    assert main(["scale", "--model", "digits", "--method", "guided-search", "--reward", "class:7", "--budget", "100",
                 "--steps", "8"]) == 0
    assert "NFE=72 verifier_calls=27 cost=99" in capsys.readouterr().out


def _text_models():
    from diffinfer import zoo
    try:
        zoo.load("shakespeare-char"), zoo.load("shakespeare-ar")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"bundled text checkpoints not available: {e}")


def _scale_text(capsys, method, reward, budget, seed=0, lam=1.0):
    """Run ``scale`` on shakespeare-char (32 tokens in 8 steps of 4); returns the parsed numbers
    and the printed best text."""
    assert main(["scale", "--model", "shakespeare-char", "--method", method, "--reward", reward,
                 "--budget", str(budget), "--length", "32", "--steps", "8", "--seed", str(seed),
                 "--lam", str(lam)]) == 0
    out = capsys.readouterr().out
    head, _, text = out.partition(":\n")  # the text follows "text (best, reward R):"
    nums = dict(re.findall(r"(NFE|verifier_calls|cost|max|mean)=(-?[0-9.]+)", head))
    best = float(re.search(r"text \(best, reward (-?[0-9.]+)\)", head).group(1))
    return {k: float(v) for k, v in nums.items()}, best, text[:-1]  # drop print's newline


@pytest.mark.parametrize("method,n,nfe,calls", [("best-of-n", 200 // 9, 8 * (200 // 9), 200 // 9),
                                                 ("smc", 200 // 16, 8 * (200 // 16), 8 * (200 // 16))])
def test_text_scale_prints_exact_costs_and_the_best_text(method, n, nfe, calls, capsys):
    _text_models()
    nums, best, text = _scale_text(capsys, method, "regex:e ", 200)
    # best-of-n: N = B // (S + 1) canvases of S = 8 steps; smc: N = B // (2 S) particles, a verifier call per step
    assert (nums["NFE"], nums["verifier_calls"], nums["cost"]) == (nfe, calls, nfe + calls)
    assert len(text) == 32 and best == nums["max"]
    assert best == len(re.findall("e ", text))  # the printed reward is the printed text's


def test_text_best_of_n_beats_best_of_one_and_usually_matches(capsys):
    _text_models()
    matched = 0
    for seed in range(4):
        one = _scale_text(capsys, "best-of-n", "ar-loglik", 9, seed)[0]["max"]  # N = 1
        many = _scale_text(capsys, "best-of-n", "ar-loglik", 90, seed)[0]["max"]  # N = 10, row 0 as above
        assert many >= one
        matched += len(re.findall("e ", _scale_text(capsys, "best-of-n", "regex:e ", 90, seed)[2])) > 0
    assert matched >= 3  # the returned text matches the regex more often than not


def test_text_smc_steers_toward_the_regex():
    _text_models()
    from diffinfer import zoo
    from diffinfer.scaling.text import get_text_verifier, run_text
    model = zoo.load("shakespeare-char")
    verifier = get_text_verifier("regex:e ", model.decode)
    for seed in range(2):
        base = run_text("best-of-n", model, verifier, 9 * 20, 32, steps=8, seed=seed).info["all_rewards"]
        res = run_text("smc", model, verifier, 16 * 20, 32, steps=8, seed=seed, lam=3.0)
        steered = float((res.reward > 0).double().mean())
        assert steered > 0.5 and steered > float((base > 0).double().mean())


def test_text_bad_names(capsys):
    _text_models()
    assert main(["scale", "--model", "shakespeare-char", "--method", "dts", "--reward", "ar-loglik"]) == 2
    assert "valid: best-of-n, smc" in capsys.readouterr().err
    assert main(["scale", "--model", "shakespeare-char", "--method", "smc", "--reward", "nope"]) == 2
    assert "valid: regex:PATTERN, keyword:WORD[,WORD...], ar-loglik" in capsys.readouterr().err
    assert main(["scale", "--model", "shakespeare-char", "--method", "smc"]) == 2
    assert "need --reward" in capsys.readouterr().err
    assert main(["scale", "--model", "shakespeare-char", "--reward", "regex:("]) == 2
    assert "bad regular expression" in capsys.readouterr().err
