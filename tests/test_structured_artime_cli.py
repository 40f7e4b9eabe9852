"""``diffinfer structured artime``: runs, prints its figures, writes the plot; bad options exit 2 in one line."""
import os

import pytest

from diffinfer.cli import main


def test_artime_demo_prints_its_figures(tmp_path, capsys):
    out_png = tmp_path / "artime.png"
    assert main(["structured", "artime", "--samples", "50", "--steps", "10", "--rows", "100", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert "one time per row" in out and "exact AR(2)" in out
    assert "CRPS rolling" in out and "plain" in out and "exact predictive" in out
    assert "lag-0 covariance error" in out and "floor of exact sequences" in out
    assert out_png.exists() and os.path.getsize(out_png) > 1000


@pytest.mark.parametrize("argv", [["--order", "0"], ["--steps", "x"], ["--solver", "heun"], ["--shift", "0"]])
def test_artime_bad_options_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(["structured", "artime", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err
