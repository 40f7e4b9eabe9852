"""``diffinfer structured bridges``: the demo runs from the CLI and prints its figures; bad
option values exit 2 with one line."""
import pytest

from test_cli_contract import assert_one_line_error, cli


def test_demo_runs_and_prints_the_figures(capsys, tmp_path):
    out = tmp_path / "bridges.png"
    rc, stdout, err = cli(["structured", "bridges", "--train-steps", "40", "--n", "12", "--steps", "4",
                           "--pairing", "mirror-coarse", "--eta", "0", "--out", out, "--no-progress"], capsys)
    assert rc == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("bridge mirror-coarse: trained 40 steps")
    rows = {line.split()[0]: line.split()[-2:] for line in lines[2:5]}
    assert set(rows) == {"source", "bridge", "true"}
    acc, rmse = (float(v) for v in rows["true"])
    assert acc > 0.9 and rmse == 0.0  # the classifier on the true mirrors, mirrored back
    assert all(0.0 <= float(v) <= 2.0 for row in rows.values() for v in row)
    assert out.stat().st_size > 0


@pytest.mark.parametrize("argv, needle", [
    (["--eta", "1.5"], "--eta"),
    (["--steps", "0"], "--steps"),
    (["--n", "181"], "--n"),
    (["--pairing", "rot90"], "--pairing"),
    (["--train-steps", "x"], "--train-steps"),
])
def test_bad_values_exit_2_with_one_line(capsys, argv, needle):
    rc, _, err = cli(["structured", "bridges", *argv], capsys)
    assert_one_line_error(rc, err, 2, needle)
