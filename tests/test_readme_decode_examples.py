"""Every `diffinfer decode ...` command the README shows runs as written (one sample): an
example that exits with a usage error (as `--length 256` with a prompt did on a 256-token
model) fails here. Their text quality is measured by `bench/decode_examples.py`."""
import pathlib
import re
import shlex

import pytest

from diffinfer.cli import main

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = sorted(set(re.findall(r"(diffinfer decode [^`\n#]*?)\s*(?:`|#|\n)", README.read_text())))


def test_the_readme_has_decode_examples():
    assert len(COMMANDS) >= 3, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_decode_example_runs(command, capsys):
    argv = shlex.split(command)[1:] + ["--batch", "1", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip()
