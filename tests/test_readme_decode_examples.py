"""Every `diffinfer decode ...` command the README shows runs as written (one sample): an
example that exits with a usage error (as `--length 256` with a prompt did on a 256-token
model) fails here. Their text quality is measured by `bench/decode_examples.py`."""
import json
import pathlib
import shlex
import sys

import pytest

from diffinfer.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from decode_examples import readme_decode_commands, readme_text_examples  # noqa: E402

COMMANDS = readme_decode_commands()


def test_the_readme_has_decode_examples():
    assert len(COMMANDS) >= 3, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_decode_example_runs(command, capsys):
    argv = shlex.split(command)[1:] + ["--batch", "1", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip()


def test_every_readme_decode_example_is_measured_and_meets_the_bar():
    """Issue 18: every decode example the README shows prints text at most 2x the AR model's
    held-out perplexity (with unigram entropy within 5%, so repetition cannot pass). The recorded run (``python bench/decode_examples.py``) must cover
    exactly the README's commands (re-run it when they change) and each must meet the bar."""
    record = json.loads((ROOT / "bench" / "results" / "decode_examples.json").read_text())
    measured = {r["command"]: r for r in record["rows"] if r.get("readme_example")}
    assert sorted(measured) == readme_text_examples(), "README decode examples changed: re-run bench/decode_examples.py"
    missed = {c: (round(r["ratio"], 2), round(r["entropy_off"], 3)) for c, r in measured.items()
              if not (r["ratio"] <= record["bar"] == 2.0 and r["entropy_off"] <= record["entropy_bar"] == 0.05)}
    assert not missed, missed
