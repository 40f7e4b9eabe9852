"""Masked process, logit filters, block policies and templates."""
import math

import pytest
import torch

from diffinfer.mdm import (AdaptiveBlocks, FixedBlocks, decode, forward_mask, get_schedule, reveal_probability,
                           transfer_counts)
from diffinfer.mdm.sampling import filter_logits
from diffinfer.mdm.template import Template
from diffinfer.rng import SampleRNG
from diffinfer.toys.markov_chain import MarkovChain

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["linear", "cosine", "loglinear"])
def test_schedules_run_from_data_to_noise(name):
    s = get_schedule(name)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    a = s.alpha(t)
    assert math.isclose(float(a[0]), 1.0) and float(a[-1]) < 1e-2
    assert (a.diff() < 0).all()
    counts = transfer_counts(torch.tensor([37, 5]), 8, name)
    assert counts.sum(1).tolist() == [37, 5] and (counts >= 0).all()


def test_linear_counts_are_llada_equal_split_and_loglinear_matches_mdlm():
    assert transfer_counts(torch.tensor([12]), 4)[0].tolist() == [3, 3, 3, 3]
    s = get_schedule("loglinear")
    t = torch.tensor(0.3, dtype=torch.float64)
    assert math.isclose(float(s.alpha(t)), 1 - (1 - s.eps) * 0.3, rel_tol=1e-12)
    # linear ancestral reveal probability is 1 / (number of steps left)
    assert math.isclose(reveal_probability(2, 5), 1 / 3, rel_tol=1e-12)
    assert reveal_probability(4, 5) == 1.0
    with pytest.raises(ValueError, match="unknown mask schedule"):
        get_schedule("square")


def test_forward_mask_rate_and_frozen_positions():
    x = torch.zeros(200, 50, dtype=torch.long)
    frozen = torch.zeros_like(x, dtype=torch.bool)
    frozen[:, :5] = True
    y = forward_mask(x, 0.3, mask_id=9, rng=SampleRNG.from_seed(0, batch=200), frozen=frozen)
    rate = float((y[:, 5:] == 9).double().mean())
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / (200 * 45))
    assert (y[:, :5] == 0).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        forward_mask(x, 1.5, mask_id=9)


def test_filters_top_k_top_p_temperature():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05, 0.0]]]))  # last entry is the mask
    p = filter_logits(logits, mask_id=4, top_p=0.75).exp()[0, 0]
    torch.testing.assert_close(p, torch.tensor([0.625, 0.375, 0, 0, 0], dtype=torch.float64))
    p = filter_logits(logits, mask_id=4, top_k=3).exp()[0, 0]
    torch.testing.assert_close(p, torch.tensor([0.5, 0.3, 0.15, 0, 0], dtype=torch.float64) / 0.95)
    p = filter_logits(logits, mask_id=4, temperature=0.5).exp()[0, 0]
    q = torch.tensor([0.25, 0.09, 0.0225, 0.0025, 0], dtype=torch.float64)
    torch.testing.assert_close(p, q / q.sum())
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, mask_id=4, top_p=0)


def test_fixed_and_adaptive_block_ends():
    start, gen_end = torch.tensor([0, 8]), torch.tensor([16, 16])
    assert FixedBlocks(4).next_end(start, gen_end, None).tolist() == [4, 12]
    probs = torch.full((2, 16, 3), 1 / 3)
    probs[0, 6] = torch.tensor([0.05, 0.05, 0.9])  # delimiter 2 confidently at 6 in row 0
    ada = AdaptiveBlocks(delimiters=[2], default=4, window=12, min_size=2, threshold=0.5)
    assert ada.next_end(start, gen_end, probs).tolist() == [7, 12]
    with pytest.raises(ValueError, match="delimiter"):
        decode(MarkovChain.two_state(), length=4, block="adaptive")


def test_adaptive_blocks_decode_fills_everything():
    c = MarkovChain.cycle(4, 0.9)
    out = decode(c, length=20, batch=8, block="adaptive", delimiters=[3], policy="threshold", seed=0)
    assert (out.tokens != c.mask_id).all()


def test_template_keeps_the_skeleton_and_fills_the_slots():
    alphabet = "ab{}:\" ,"
    encode = lambda s: [alphabet.index(ch) for ch in s]  # noqa: E731
    tpl = Template.from_text('{"a": "{first:3}", "b": {second:2}}', encode, mask_id=len(alphabet))
    assert set(tpl.slots) == {"first", "second"}
    V = len(alphabet)
    chain = MarkovChain(torch.full((V, V), 1 / V))
    out = tpl.fill(chain, policy="threshold", seed=0, batch=4)
    given = tpl.tokens != chain.mask_id
    assert (out.tokens[:, given] == tpl.tokens[given]).all()
    assert (out.tokens != chain.mask_id).all()
    s, e = tpl.slots["first"]
    assert out.decoded_per_row.tolist() == [5] * 4 and e - s == 3
    with pytest.raises(ValueError, match="no slot"):
        Template.from_text('{"a": "b"}', encode, mask_id=V)
