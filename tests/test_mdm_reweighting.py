"""EDLM energy reweighting (mdm.EnergyReweighting) against the exact joint of a small
hidden-Markov oracle, enumerated over every sequence."""
import pytest
import torch

from diffinfer.mdm import EnergyReweighting, decode
from diffinfer.metrics import total_variation
from diffinfer.toys import HiddenMarkovModel
from sequence_laws import empirical_law, exact_law, exact_sets_floor

torch.set_num_threads(1)
V, L, N = 3, 4, 4000


def _hmm():
    return HiddenMarkovModel([[0.9, 0.1], [0.15, 0.85]], [[0.8, 0.15, 0.05], [0.05, 0.15, 0.8]])


def _law(tokens):
    return empirical_law(tokens, V)


def _exact_law(hmm):
    return exact_law(hmm, V, L)


def _floor(hmm, reps=6):
    return exact_sets_floor(hmm, V, L, N, reps)


@pytest.mark.parametrize("proposal", ["commit", "full"])
def test_all_tokens_in_one_call_reach_the_exact_joint_with_enough_particles(proposal):
    """Decoding all 4 tokens in one call from the factorised conditionals draws from the
    product of marginals (far from the sticky joint); reweighting under the exact energy
    with 256 candidates per row lands within the spread of exact sample sets."""
    hmm = _hmm()
    exact, floor = _exact_law(hmm), _floor(hmm)
    plain = decode(hmm, length=L, batch=N, policy="random", steps=1, seed=0)
    assert total_variation(_law(plain.tokens), exact) > 4 * floor
    energy = hmm.log_marginal if proposal == "commit" else hmm.log_prob
    rw = EnergyReweighting(energy, particles=256, proposal=proposal)
    r = decode(hmm, length=L, batch=N, policy="random", steps=1, seed=0, reweight=rw)
    assert total_variation(_law(r.tokens), exact) <= 1.5 * floor
    assert r.nfe == 1 and r.energy_calls == 1 and r.energy_rows == N * 256


def test_two_tokens_per_call_in_the_dilated_order_stay_exact():
    hmm = _hmm()
    exact, floor = _exact_law(hmm), _floor(hmm)
    rw = EnergyReweighting(hmm.log_marginal, particles=64)
    r = decode(hmm, length=L, batch=N, policy="random", steps=2, seed=1, reweight=rw)
    assert r.tokens_per_nfe == 2 and r.energy_calls == 2
    assert total_variation(_law(r.tokens), exact) <= 1.5 * floor


def test_more_particles_move_towards_the_joint():
    hmm = _hmm()
    exact = _exact_law(hmm)
    tv = []
    for k in (1, 4, 64):
        r = decode(hmm, length=L, batch=N, policy="random", steps=1, seed=2,
                   reweight=EnergyReweighting(hmm.log_marginal, particles=k))
        tv.append(total_variation(_law(r.tokens), exact))
    assert tv[0] > tv[1] > tv[2]


def test_bad_input():
    hmm = _hmm()
    with pytest.raises(TypeError, match="callable"):
        EnergyReweighting(3.0)
    with pytest.raises(ValueError, match="particles"):
        EnergyReweighting(hmm.log_prob, particles=0)
    with pytest.raises(ValueError, match="unknown proposal 'all'; valid: commit, full"):
        EnergyReweighting(hmm.log_prob, proposal="all")
    with pytest.raises(TypeError, match="EnergyReweighting"):
        decode(hmm, length=L, batch=2, reweight=hmm.log_prob)
    nan_energy = EnergyReweighting(lambda t: torch.full((t.shape[0],), float("nan")), particles=2)
    with pytest.raises(ValueError, match="NaN"):
        decode(hmm, length=L, batch=2, policy="random", steps=1, seed=0, reweight=nan_energy)
