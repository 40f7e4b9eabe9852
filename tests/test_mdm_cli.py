"""``diffinfer decode`` on the built-in Markov oracle (the bundled text model is optional)."""
import json

from diffinfer.cli import main


def test_decode_markov_prints_text_and_statistics(capsys):
    rc = main(["decode", "--model", "markov", "--prompt", "abc", "--length", "24", "--policy", "threshold",
               "--threshold", "0.9", "--block", "8", "--batch", "2", "--json"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    docs = [json.loads(line) for line in lines]  # JSON lines: one object per sample, nothing else
    texts = [d["text"] for d in docs]
    assert [d["sample"] for d in docs] == [0, 1]
    assert len(texts) == 2 and all(t.startswith("abc") and len(t) == 27 for t in texts)
    stats = docs[-1]["stats"]
    assert stats["decoded_tokens"] == 48 and stats["nfe"] >= 3 and stats["nll_per_token"] > 0


def test_decode_policies_and_errors(capsys):
    assert main(["decode", "--model", "markov", "--length", "16", "--policy", "dilated"]) == 0
    assert main(["decode", "--model", "markov", "--length", "16", "--policy", "rcr", "--steps", "4",
                 "--cache", "reuse"]) == 0
    assert main(["decode", "--model", "markov", "--length", "16", "--block", "adaptive"]) == 0
    capsys.readouterr()
    assert main(["decode", "--model", "no-such-model", "--length", "8"]) == 2
    assert "markov" in capsys.readouterr().err
    assert main(["decode", "--model", "markov", "--length", "10", "--block", "4"]) == 2
    assert "does not divide" in capsys.readouterr().err
    assert main(["decode", "--model", "markov", "--prompt", "xyz", "--length", "4"]) == 2
