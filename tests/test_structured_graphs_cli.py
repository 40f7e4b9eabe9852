"""``diffinfer structured graphs``: the demo runs end to end (tiny settings) and bad options
give exit status 2 with one line; the graph data and MMD measures behave."""
import math

import pytest
import torch

from diffinfer.cli import main

pytest.importorskip("networkx")


def test_the_demo_runs_and_prints_the_mmd_table(capsys, tmp_path):
    out = tmp_path / "g.png"
    status = main(["structured", "graphs", "--train-steps", "3", "--samples", "4", "--steps", "3",
                   "--no-progress", "--out", str(out)])
    text = capsys.readouterr().out
    assert status == 0, text
    assert "degree MMD^2" in text and "erdos-renyi" in text and "floor" in text and "model" in text
    assert out.exists() and out.stat().st_size > 0


@pytest.mark.parametrize("argv,needle", [
    (["--data", "trees"], "--data 'trees' is not valid; valid: community, grid"),
    (["--solver", "rk9"], "--solver 'rk9' is not valid; valid:"),
    (["--samples", "1"], "--samples"),
    (["--train-steps", "0"], "--train-steps"),
])
def test_a_bad_option_value_exits_2_with_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as e:  # argparse errors exit from the parser
        status = main(["structured", "graphs", "--no-progress"] + argv)
        raise SystemExit(status)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_graph_data_and_mmd():
    from diffinfer import graph_data
    from diffinfer.graph_stats import graph_mmd, mmd_tv
    X, A = graph_data.graphs("grid", 6, 12, seed=1)
    assert torch.equal(A, A.transpose(1, 2)) and not bool(torch.diagonal(A, dim1=1, dim2=2).any())
    assert all(int(a.sum()) // 2 in (16, 17) for a in A)  # 3 x 4: 17 edges, 2 x 6: 16
    # the checkerboard feature: every edge joins opposite colours
    assert bool(((X @ X.transpose(1, 2))[A == 1] == -1).all())
    X, A = graph_data.graphs("community", 6, 12, seed=1)
    assert bool((torch.sign(X).abs() == 1).all())
    same = graph_mmd(A, A)
    assert same["degree"] == pytest.approx(0.0, abs=1e-12) and same["clustering"] == pytest.approx(0.0, abs=1e-12)
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    # TV = 1 between every p and q: MMD^2 = 1 + 1 - 2 exp(-1 / 2)
    assert mmd_tv(p, q, sigma=1.0) == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-12)
    with pytest.raises(ValueError, match="unknown graph kind 'trees'; valid: community, grid"):
        graph_data.graphs("trees", 2)
