"""Hand-worked and exact checks of masked-diffusion decoding parts: running-confidence
remasking on a scripted model, the cosine transfer schedule, the NFE accounting of
``DecodeResult`` and S^3 template filling (with slot-length adaptation) against the exact
conditional law of a Markov chain."""
import itertools
import math

import pytest
import torch

from diffinfer.mdm import decode, transfer_counts
from diffinfer.mdm.schedules import get_schedule, revealed_counts
from diffinfer.mdm.template import Template
from diffinfer.metrics import total_variation
from diffinfer.toys.markov_chain import MarkovChain

torch.set_num_threads(1)


# ---- running-confidence remasking on a scripted model ------------------------------------
class Scripted:
    """A tiny masked model over tokens {0, 1, 2} (mask 3) whose call ``c`` proposes, at each
    position ``i`` listed in ``script[c]``, token ``tok`` with probability ``p`` (the other two
    tokens share the rest); unlisted positions are uniform. One row, canvas of length 3."""

    mask_id, vocab_size = 3, 4

    def __init__(self, script):
        self.script, self.calls = script, 0

    def logits(self, tokens):
        B, L = tokens.shape
        probs = torch.full((B, L, 4), 1 / 3, dtype=torch.float64)
        probs[..., 3] = 0
        for i, (tok, p) in self.script[min(self.calls, len(self.script) - 1)].items():
            probs[:, i, :3] = (1 - p) / 2
            probs[:, i, tok] = p
        self.calls += 1
        return probs.log()


def _rcr_trace(script):
    """Greedy RCR over 3 masked positions in 3 steps (schedule 1, 1, 1): per step, the
    committed and the remasked positions, and the final canvas."""
    trace = []

    def record(step, tokens, info):
        trace.append((info["commit"][0].nonzero()[:, 0].tolist(), info["remask"][0].nonzero()[:, 0].tolist()))

    out = decode(Scripted(script), canvas=[3, 3, 3], policy="rcr", steps=3, temperature=0, callback=record)
    return trace, out.tokens[0].tolist()


def test_rcr_ranks_by_the_confidence_of_the_token_it_commits():
    """Step 0 commits position 0 (0.9). At step 1 position 1's proposal changes from token 1
    (0.6) to token 2 (0.55) while position 2 proposes token 0 again (0.5, then 0.58). The token
    position 1 would commit has running confidence 0.55, position 2's has max(0.5, 0.58) = 0.58,
    so position 2 is committed. (The old rule ranked position 1 by token 1's 0.6, a token it
    would not commit, and committed token 2 there.)"""
    script = [{0: (0, 0.9), 1: (1, 0.6), 2: (0, 0.5)},
              {0: (0, 0.9), 1: (2, 0.55), 2: (0, 0.58)},
              {0: (0, 0.9), 1: (2, 0.55), 2: (0, 0.58)}]
    trace, final = _rcr_trace(script)
    assert trace == [([0], []), ([2], []), ([1], [])]
    assert final == [0, 2, 0]


def test_rcr_keeps_the_running_maximum_of_an_unchanged_proposal_and_of_decoded_tokens():
    """Step 1: position 1 proposes token 1 again but less surely (0.6, then 0.5): its running
    confidence stays 0.6 and beats position 2's 0.55 (max(0.5, 0.55)). Position 0, decoded at
    step 0 with 0.9, keeps 0.9 although the model now proposes token 1 there with 0.4, so it is
    not remasked (ranking decoded tokens by this step's proposal would remask it)."""
    script = [{0: (0, 0.9), 1: (1, 0.6), 2: (0, 0.5)},
              {0: (1, 0.4), 1: (1, 0.5), 2: (0, 0.55)},
              {0: (1, 0.4), 1: (1, 0.5), 2: (2, 0.7)}]
    trace, final = _rcr_trace(script)
    assert trace == [([0], []), ([1], []), ([2], [])]
    assert final == [0, 1, 2]


def test_rcr_remasks_an_overtaken_token_and_starts_afresh_when_its_proposal_changes():
    """Step 0 commits position 0 with token 0 at 0.7. Step 1: positions 1 and 2 reach 0.8 and
    0.75, so two decoded tokens are kept, position 0 is remasked and both are committed.
    Step 2 (the last) recommits position 0, now with token 2."""
    script = [{0: (0, 0.7), 1: (1, 0.6), 2: (1, 0.5)},
              {0: (0, 0.7), 1: (1, 0.8), 2: (1, 0.75)},
              {0: (2, 0.45), 1: (1, 0.8), 2: (1, 0.75)}]
    trace, final = _rcr_trace(script)
    assert trace == [([0], []), ([1, 2], [0]), ([0], [])]
    assert final == [2, 1, 1]


def test_rcr_does_not_carry_a_remasked_tokens_confidence_to_a_new_token():
    """Four positions, steps 1, 1, 1, 1 of decoded tokens. Position 0 (token 0, 0.7) is remasked
    at step 1; at step 2 it proposes token 1 with only 0.41 while position 3 proposes token 2
    with 0.45 (running 0.45): the third decoded token is position 3. Carrying token 0's 0.7 over
    to token 1 would keep position 0 instead."""
    script = [{0: (0, 0.7), 1: (1, 0.4), 2: (1, 0.4), 3: (2, 0.4)},
              {0: (0, 0.7), 1: (1, 0.8), 2: (1, 0.75), 3: (2, 0.4)},
              {0: (1, 0.41), 1: (1, 0.8), 2: (1, 0.75), 3: (2, 0.45)},
              {0: (1, 0.41), 1: (1, 0.8), 2: (1, 0.75), 3: (2, 0.45)}]
    trace = []
    out = decode(Scripted(script), canvas=[3, 3, 3, 3], policy="rcr", steps=4, temperature=0,
                 callback=lambda s, t, info: trace.append((info["commit"][0].nonzero()[:, 0].tolist(),
                                                           info["remask"][0].nonzero()[:, 0].tolist())))
    assert trace == [([0], []), ([1, 2], [0]), ([3], []), ([0], [])]
    assert out.tokens[0].tolist() == [1, 1, 1, 2]


def test_rcr_with_entropy_scores_ranks_by_the_score_not_by_zero():
    """Entropy scores are negative: running values start at the first score (not at 0, which
    would tie every position and commit left to right). Position 2 has the surest law."""
    script = [{0: (0, 0.5), 1: (1, 0.6), 2: (2, 0.9)}] * 3
    trace = []
    decode(Scripted(script), canvas=[3, 3, 3], policy="rcr", score="entropy", steps=3, temperature=0,
           callback=lambda s, t, info: trace.append(info["commit"][0].nonzero()[:, 0].tolist()))
    assert trace == [[2], [1], [0]]


# ---- the cosine transfer schedule -------------------------------------------------------
def _cosine_revealed(n: int, s: int, steps: int) -> float:
    """The scheduled share of ``n`` tokens revealed after ``s`` of ``steps`` steps, with one token
    per step reserved when ``n >= steps``: the masked fraction of the rest is cos(pi s / (2 S))."""
    frac = 1 - math.cos(math.pi / 2 * s / steps)
    return s + (n - steps) * frac if n >= steps else n * frac


def test_cosine_alpha_masks_cos_of_progress():
    sched = get_schedule("cosine")
    for S in (4, 16, 50):
        for s in range(S + 1):
            t = torch.tensor(1 - s / S, dtype=torch.float64)
            assert math.isclose(float(sched.masked_fraction(t)), math.cos(math.pi / 2 * s / S), abs_tol=1e-12)


def test_cosine_transfer_counts_back_load_commit_every_step_and_sum_to_the_length():
    """For every steps in 1..48 and length in 1..200: counts sum to the length, every step commits
    at least one token when length >= steps, the running totals are the exact scheduled ones
    rounded (within 1/2), and the second half of the steps commits at least as many as the first."""
    lengths = torch.arange(1, 201)
    for S in range(1, 49):
        counts = transfer_counts(lengths, S, "cosine")  # [N, S]
        assert counts.shape == (len(lengths), S)
        assert (counts.sum(1) == lengths).all()
        assert (counts >= 0).all()
        assert (counts[lengths >= S] >= 1).all()
        cum = counts.cumsum(1)
        for n in (1, S, S + 1, 2 * S + 3, 97, 200):
            if n > 200:
                continue
            for s in range(1, S + 1):
                assert abs(int(cum[n - 1, s - 1]) - _cosine_revealed(n, s, S)) <= 0.5 + 1e-9, (n, S, s)
        half = S // 2
        assert (counts[:, :half].sum(1) <= counts[:, S - half:].sum(1)).all()
    issue = transfer_counts(torch.tensor([48]), 16, "cosine")[0]  # was [5, 4, 5, ..., 1, 1, 0]
    assert issue[-1] >= 1 and issue[0] < issue[-1]


@pytest.mark.parametrize("name", ["linear", "loglinear"])
def test_other_schedules_commit_every_step_too(name):
    lengths = torch.arange(1, 151)
    for S in range(1, 41):
        counts = transfer_counts(lengths, S, name)
        assert (counts.sum(1) == lengths).all()
        assert (counts[lengths >= S] >= 1).all()
    # linear stays LLaDA's equal split, remainder by rounding
    assert transfer_counts(torch.tensor([14]), 4, "linear")[0].tolist() == [4, 3, 4, 3]


def test_decode_with_the_cosine_schedule_follows_the_counts_and_wastes_no_call():
    c = MarkovChain.random(5, seed=4)
    per_step = []
    out = decode(c, length=48, batch=3, policy="low-confidence", steps=16, schedule="cosine", seed=0,
                 callback=lambda s, t, info: per_step.append(info["commit"].sum(-1)))
    expect = transfer_counts(torch.tensor([48]), 16, "cosine")[0]
    assert torch.equal(torch.stack(per_step), expect[:, None].expand(16, 3))
    assert out.nfe == 16 and (out.tokens != c.mask_id).all()
    # the decode loop's running totals are the schedule's
    assert torch.equal(revealed_counts(torch.tensor(48), torch.arange(17), torch.tensor(16), "cosine"),
                       torch.cat([torch.zeros(1, dtype=torch.long), expect.cumsum(0)]))


# ---- NFE accounting ------------------------------------------------------------------------
class Counting:
    """Wraps a masked model and counts its batched calls and the rows pushed through it."""

    def __init__(self, model):
        self.model, self.mask_id, self.vocab_size = model, model.mask_id, model.vocab_size
        self.calls, self.rows = 0, 0

    def logits(self, tokens):
        self.calls += 1
        self.rows += tokens.shape[0]
        return self.model.logits(tokens).clamp_min(-1e4)  # finite, so guidance is defined


def _ragged_canvas(mask_id):
    """Three rows of 6 positions with 2, 6 and 4 slots: one token per step finishes them at
    steps 2, 6 and 4."""
    canvas = torch.tensor([[0, 1, 2, 0, 1, 2]] * 3)
    canvas[0, [1, 4]] = mask_id
    canvas[1, :] = mask_id
    canvas[2, 1:5] = mask_id
    return canvas


def test_nfe_counts_batched_calls_when_rows_finish_at_different_steps():
    c = MarkovChain.random(3, seed=7)
    model = Counting(c)
    out = decode(model, canvas=_ragged_canvas(c.mask_id), policy="threshold", threshold=1.0, seed=0)
    assert out.decoded_per_row.tolist() == [2, 6, 4]
    assert out.nfe_per_row.tolist() == [2, 6, 4]  # each row stops counting when it is finished
    assert out.nfe == model.calls == 6  # one batched call per step; the batch runs until row 1 is done
    assert out.row_evaluations == model.rows == 12
    assert out.tokens_per_nfe == pytest.approx((2 + 6 + 4) / (3 * 6))  # tokens per sequence per NFE
    assert out.stats()["nfe"] == 6 and out.stats()["tokens_per_nfe"] == round(12 / 18, 4)
    alone = decode(Counting(c), canvas=_ragged_canvas(c.mask_id)[:1], policy="threshold", threshold=1.0, seed=0)
    assert alone.nfe == 2 and alone.tokens_per_nfe == 1.0


def test_guidance_counts_two_evaluations_per_call():
    c = MarkovChain.random(3, seed=7)
    model = Counting(c)
    out = decode(model, canvas=_ragged_canvas(c.mask_id), policy="threshold", threshold=1.0, seed=0, cfg=1.0)
    assert model.calls == 6 and out.nfe == 2 * model.calls
    assert out.nfe_per_row.tolist() == [4, 12, 8] and out.row_evaluations == model.rows


def test_reuse_cache_nfe_is_the_number_of_batched_calls():
    """With RADD reuse rows skip calls at different steps: the batch NFE counts every step on
    which any row was evaluated, at least the most calls of any single row."""
    c = MarkovChain.random(4, seed=2)
    model = Counting(c)
    out = decode(model, length=12, batch=4, policy="ancestral", steps=24, seed=3, cache="reuse")
    assert out.nfe == model.calls and out.row_evaluations == model.rows
    assert int(out.nfe_per_row.max()) < out.nfe < out.steps
    assert out.tokens_per_nfe == pytest.approx(12 / out.nfe)


# ---- S^3 templates against the exact conditional law -------------------------------------
NULL = 3


def _null_chain():
    """States 0, 1, 2 and an absorbing null 3: a slot at the end of the canvas may end early
    with nulls, a slot followed by skeleton text never holds one (probability zero)."""
    return MarkovChain([[0.30, 0.40, 0.20, 0.10],
                        [0.25, 0.15, 0.35, 0.25],
                        [0.40, 0.30, 0.10, 0.20],
                        [0.00, 0.00, 0.00, 1.00]], initial=[0.4, 0.3, 0.3, 0.0])


def _template(mask_id):
    """Skeleton ``0 1 [A A] 2 [B B B]``: slot A inside the skeleton, slot B at the end."""
    return Template(torch.tensor([0, 1, mask_id, mask_id, 2, mask_id, mask_id, mask_id]),
                    {"a": (2, 4), "b": (5, 8)})


def _exact_slot_law(chain, tpl):
    """P(slot contents | skeleton) over all V^5 fillings, by enumeration with ``log_prob``."""
    V = chain.n_states
    slots = (tpl.tokens == chain.mask_id).nonzero()[:, 0]
    fills = torch.tensor(list(itertools.product(range(V), repeat=len(slots))))  # [V^5, 5]
    full = tpl.tokens.expand(len(fills), -1).clone()
    full[:, slots] = fills
    p = chain.log_prob(full).exp()
    return p / p.sum(), slots


def _histogram(contents, V, n_slots):
    codes = (contents * V ** torch.arange(n_slots - 1, -1, -1)).sum(1)
    return torch.bincount(codes, minlength=V ** n_slots).double()


@pytest.mark.parametrize("null_id", [None, NULL])
def test_template_fill_samples_the_exact_conditional_law_of_the_slots(null_id):
    """One token per step in random order with exact conditionals samples the slots' exact joint
    law given the skeleton, with or without slot-length adaptation (here the null is absorbing,
    so ending a slot with nulls is what the law does). The total-variation distance of N fills
    to N exact draws must lie within the noise floor: the largest of 200 distances between two
    independent exact sample sets of the same size N."""
    chain, N, R = _null_chain(), 4000, 200
    tpl = _template(chain.mask_id)
    law, slots = _exact_slot_law(chain, tpl)
    V, S = chain.n_states, len(slots)
    out = tpl.fill(chain, null_id=null_id, policy="random", steps=S, batch=N, seed=0)
    assert (out.tokens[:, tpl.tokens != chain.mask_id] == tpl.tokens[tpl.tokens != chain.mask_id]).all()
    g = torch.Generator().manual_seed(1)
    draw = lambda: _histogram(torch.tensor(list(itertools.product(range(V), repeat=S)))[  # noqa: E731
        torch.multinomial(law, N, replacement=True, generator=g)], V, S)
    reference = draw()
    floor = max(total_variation(draw(), draw()) for _ in range(R))
    tv = total_variation(_histogram(out.tokens[:, slots], V, S), reference)
    assert tv <= floor, (tv, floor)
    if null_id is not None:  # slot B ends early in some rows; values() cuts it there
        vals = [tpl.values(row, null_id=NULL) for row in out.tokens]
        lengths = torch.tensor([len(v["b"]) for v in vals])
        assert set(lengths.tolist()) == {0, 1, 2, 3} and all(len(v["a"]) == 2 for v in vals)


def test_slot_length_adaptation_ends_each_slot_on_its_own():
    """A non-absorbing null: after a slot's first null the rest of that slot is null, the other
    slot and the skeleton are untouched, and a slot ended early costs no more model calls."""
    chain = MarkovChain([[0.3, 0.3, 0.1, 0.3], [0.3, 0.3, 0.1, 0.3], [0.3, 0.3, 0.1, 0.3],
                         [0.3, 0.3, 0.1, 0.3]])
    tpl = Template(torch.tensor([0, 4, 4, 4, 4, 2, 4, 4, 4, 4, 1]), {"a": (1, 5), "b": (6, 10)})
    out = tpl.fill(chain, null_id=NULL, policy="low-confidence", batch=64, seed=0)
    skeleton = tpl.tokens != chain.mask_id
    assert (out.tokens[:, skeleton] == tpl.tokens[skeleton]).all()
    ended_a = ended_b = 0
    for row in out.tokens.tolist():
        for s, e in tpl.slots.values():
            slot = row[s:e]
            if NULL in slot:
                assert all(t == NULL for t in slot[slot.index(NULL):])
                ended_a += s == 1
                ended_b += s == 6
    assert ended_a > 0 and ended_b > 0
    plain = tpl.fill(chain, policy="low-confidence", batch=64, seed=0)
    assert out.nfe <= plain.nfe and out.row_evaluations < plain.row_evaluations
    with pytest.raises(ValueError, match="null_id"):
        tpl.fill(chain, null_id=NULL, eos_id=NULL)
