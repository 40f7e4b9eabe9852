"""``mdm.DecodeTrace``: the canvases and commit steps it records agree with the decode."""
import pytest
import torch

from diffinfer.mdm import DecodeTrace, decode
from diffinfer.toys.markov_chain import MarkovChain


def _replay_checks(trace, result, gen_start):
    """The trace's last canvas is the result; each position's commit step is the step at
    which its final token appeared (masked just before, unchanged after)."""
    canv, cs = trace.canvases, trace.commit_step  # [S, B, L], [B, L]
    mask = trace.mask_id
    assert trace.steps == result.steps == canv.shape[0]
    assert torch.equal(canv[-1], result.tokens)
    B, L = cs.shape
    for b in range(B):
        for p in range(L):
            s = int(cs[b, p])
            if p < int(gen_start[b]):
                assert s == -1  # the prompt is never committed
                continue
            assert s >= 0
            assert (canv[s:, b, p] == result.tokens[b, p]).all()
            assert s == 0 or int(canv[s - 1, b, p]) == mask


def test_one_token_per_step_commits_a_permutation():
    c = MarkovChain.random(5, seed=3)
    L, B = 12, 4
    trace = DecodeTrace(c.mask_id)
    res = decode(c, length=L, batch=B, policy="random", seed=7, callback=trace)
    cs = trace.commit_step
    for b in range(B):  # each step commits exactly one position
        assert sorted(cs[b].tolist()) == list(range(L))
    masked_left = (trace.canvases == c.mask_id).sum(-1)  # [S, B]
    assert torch.equal(masked_left, (L - 1 - torch.arange(L))[:, None].expand(L, B))
    _replay_checks(trace, res, res.gen_start)


def test_left_to_right_blocks_commit_in_position_order_after_a_prompt():
    c = MarkovChain.random(5, seed=4)
    trace = DecodeTrace(c.mask_id)
    prompt = torch.tensor([1, 2, 3])
    res = decode(c, prompt=prompt, length=8, policy="random", block=1, seed=0, callback=trace)
    assert trace.commit_step[0].tolist() == [-1, -1, -1] + list(range(8))
    _replay_checks(trace, res, res.gen_start)


@pytest.mark.parametrize("policy,options", [("rcr", {}), ("threshold", {"threshold": 0.5}),
                                            ("low-confidence", {})])
def test_commit_steps_replay_the_canvases(policy, options):
    """Also under remasking (``rcr`` masks committed tokens again; their commit step is
    the later one)."""
    c = MarkovChain.random(5, seed=1)
    trace = DecodeTrace(c.mask_id)
    steps = 8 if policy != "threshold" else None
    res = decode(c, length=24, batch=16, policy=policy, steps=steps, seed=0, callback=trace, **options)
    _replay_checks(trace, res, res.gen_start)


def test_rcr_remasking_moves_commit_steps_later():
    """Positions remasked and committed again carry the later step: at least one position
    held a token before its commit step (checked on a decode where rcr remasks)."""
    c = MarkovChain.random(5, seed=1)
    remasked, stale = [], []

    def during(step, tokens, info):  # mid-decode: a masked position has no commit step
        remasked.append(int(info["remask"].sum()))
        stale.append(int(((tokens == c.mask_id) & (trace.commit_step >= 0)).sum()))
    trace = DecodeTrace(c.mask_id, then=during)
    decode(c, length=24, batch=32, policy="rcr", steps=8, seed=0, callback=trace)
    assert sum(remasked) > 0 and stale == [0] * len(stale)
    canv, cs = trace.canvases, trace.commit_step
    earlier_token = [(canv[: int(cs[b, p]), b, p] != c.mask_id).any()
                     for b in range(cs.shape[0]) for p in range(cs.shape[1]) if cs[b, p] > 0]
    assert any(bool(v) for v in earlier_token)


def test_trace_does_not_change_the_decode_and_reports_misuse():
    c = MarkovChain.random(5, seed=2)
    plain = decode(c, length=10, batch=3, policy="entropy", seed=5)
    trace = DecodeTrace(c.mask_id, keep_canvases=False)
    traced = decode(c, length=10, batch=3, policy="entropy", seed=5, callback=trace)
    assert torch.equal(plain.tokens, traced.tokens)
    with pytest.raises(ValueError, match="keep_canvases=False"):
        trace.canvases  # noqa: B018
    with pytest.raises(ValueError, match="empty"):
        DecodeTrace(0).commit_step  # noqa: B018
