"""The command line: solver listing, toy sampling with its figures, clear errors."""
import os

from diffinfer.cli import main


def test_solvers_lists_every_registered_solver(capsys):
    from diffinfer import solvers
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name in solvers.names():
        assert f"\n{name} " in out
    assert "order" in out and "stochastic" in out


def test_sample_ring2d_prints_figures_and_writes_plot(tmp_path, capsys):
    out_png = tmp_path / "s.png"
    assert main(["sample", "--model", "ring2d", "--solver", "euler", "--steps", "10", "--n", "300",
                 "--seed", "0", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert "NFE=10" in out and "sliced Wasserstein" in out and "log-density" in out
    assert out_png.exists() and os.path.getsize(out_png) > 1000
    with open(out_png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_unknown_names_list_valid_ones(capsys):
    assert main(["sample", "--model", "ring2d", "--solver", "nope", "--n", "10"]) == 2
    assert "valid:" in capsys.readouterr().err
    assert main(["sample", "--model", "ring2d", "--process", "nope", "--n", "10"]) == 2
    assert "valid:" in capsys.readouterr().err
