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


def test_graph_net_is_permutation_equivariant_and_its_edges_symmetric():
    """Relabelling the nodes permutes both outputs alike; the edge output is symmetric with a
    zero diagonal (float64, a random untrained net)."""
    from diffinfer.nets.graph import GraphNet
    torch.manual_seed(0)
    net = GraphNet(node_features=2, hidden=16).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3, 7, 2, generator=g, dtype=torch.float64)
    U = torch.randn(3, 7, 7, generator=g, dtype=torch.float64).triu(1)
    A = U + U.transpose(1, 2)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    X_out, A_out = net(X, A, t)
    assert torch.equal(A_out, A_out.transpose(1, 2)) and not bool(torch.diagonal(A_out, dim1=1, dim2=2).any())
    perm = torch.randperm(7, generator=g)
    Xp, Ap = net(X[:, perm], A[:, perm][:, :, perm], t)
    assert torch.allclose(Xp, X_out[:, perm], atol=1e-12) and torch.allclose(Ap, A_out[:, perm][:, :, perm], atol=1e-12)


def test_a_seed_gives_the_same_graphs_alone_or_in_a_batch_with_the_graph_net():
    """With a batched network (matrix products whose kernels may depend on the batch size)
    the library promises agreement up to round-off: float32 states within 1e-4, and the same
    graphs after thresholding."""
    from diffinfer import VP, sample
    from diffinfer.nets.graph import GraphNet
    from diffinfer.structured_state import Dense, Layout, Symmetric, joint_denoiser
    torch.manual_seed(0)
    layout = Layout(nodes=Dense(8, 1), adj=Symmetric(8))
    den = joint_denoiser(GraphNet(node_features=1, hidden=16), layout, VP("cosine"), "v")
    batch = sample(den, shape=(5, layout.size), solver="dpmpp-2m-sde", steps=6, seed=3).x
    alone = torch.cat([sample(den, shape=(1, layout.size), solver="dpmpp-2m-sde", steps=6, seed=(3, [k])).x
                       for k in range(5)])
    assert float((batch - alone).abs().max()) < 1e-4
    assert torch.equal(layout.unpack(batch)[1] > 0, layout.unpack(alone)[1] > 0)
