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


def _demo_rows(out: str) -> dict:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[1].isdigit():
            rows[(parts[0], int(parts[1]))] = float(parts[3])  # (solver, steps) -> FD
    return rows


def test_demo_shows_the_shipped_fitted_grid_beside_the_default(tmp_path, capsys):
    """Issue 14: at 5 steps the default grid leaves dpmpp-2m far off (FD ~30), the grid fitted
    to `digits` and shipped beside it is near converged; the demo prints both rows, and
    `--no-fitted` leaves the fitted rows out."""
    out = str(tmp_path / "d.png")
    assert main(["demo", "--n", "40", "--steps", "5", "--solvers", "dpmpp-2m", "--out", out]) == 0
    rows = _demo_rows(capsys.readouterr().out)
    fitted = [k for k in rows if k[0].endswith("+fit")]
    assert fitted == [("unipc[order=3]+fit", 5)], rows
    assert rows[fitted[0]] < 0.2 * rows[("dpmpp-2m", 5)], rows
    assert main(["demo", "--n", "2", "--steps", "12", "--solvers", "ddim", "--out", out]) == 0  # none fitted at 12
    assert not any(k[0].endswith("+fit") for k in _demo_rows(capsys.readouterr().out))
    assert main(["demo", "--n", "2", "--steps", "5", "--solvers", "ddim", "--no-fitted", "--out", out]) == 0
    assert not any(k[0].endswith("+fit") for k in _demo_rows(capsys.readouterr().out))
