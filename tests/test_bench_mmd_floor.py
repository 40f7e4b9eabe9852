"""``bench/accel_prune_mmd.py --part mmd-floor``: how often an exact sampler meets the MMD goal's
bar (SW at most 0.5 x the untouched model's on its fitted grid), the figure that says whether a
missed row is a method's shortfall or the score's own noise."""
import pytest
import torch

from bench import accel_prune_mmd as bench


def _row(mixture, untouched, mmd=0.01, floor=0.02):
    return {"mixture": mixture, "dim": 2, "nfe": 3, "fitted": "unipc/3", "sw_untouched_default": 1.0,
            "sw_untouched_fitted": untouched, "sw_mmd_fitted": mmd, "ratio": mmd / untouched,
            "goal_met": mmd <= bench.GOAL * untouched, "sw_floor": floor, "sw_model_50": floor,
            "mmd_seconds": 1.0, "iterations": 1200, "lr": 3e-4}


def test_pass_rates_judge_each_row_by_its_own_bar_and_multiply():
    rows = [_row("a", 0.5), _row("a", 0.3), _row("b", 0.2)]
    sws = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([0.05, 0.2])}
    every = bench.exact_pass_rates(rows, sws)
    assert [r["p_exact_meets"] for r in rows] == [0.5, 0.25, 0.5]  # bars 0.25, 0.15, 0.1
    assert every == pytest.approx(0.5 * 0.25 * 0.5)
    assert rows[0]["sw_exact_mean"] == pytest.approx(0.25) and rows[2]["sw_exact_sd"] == pytest.approx(0.1061, abs=1e-4)
    bar_row = _row("b", 0.2)  # an exact score equal to the bar meets it (the goal is "at most")
    bench.exact_pass_rates([bar_row], {"b": torch.tensor([0.1, 0.3])})
    assert bar_row["p_exact_meets"] == 0.5
    md = bench.markdown({"mmd": {"mixtures": rows, "digits": [], "seconds": 1.0, "p_exact_meets_all": every,
                                 "floor_draws": 4, "floor_seconds": 2.0}})
    assert "| 0.25 |" in md and "with probability 0.06" in md
    assert "| - | - |" in bench.markdown({"mmd": {"mixtures": [_row("c", 0.4)], "seconds": 1.0}})


def test_exact_draws_are_independent_exact_sets_scored_against_the_reference(monkeypatch):
    toy = bench.mixture("ring2d")
    d = bench.exact_sw_draws(toy, 300, 6)
    assert d.shape == (6,) and (d > 0).all() and len(set(d.tolist())) == 6
    # their law is the two-exact-sets floor's: the floor (another exact set) lies within their spread
    ref = toy.sample(300, seed=bench.REF_SEED)
    floor = bench.metrics.sliced_wasserstein(toy.sample(300, seed=bench.FLOOR_SEED), ref)
    wide = bench.exact_sw_draws(toy, 300, 40)
    assert wide.quantile(0.01) <= floor <= wide.quantile(0.99)
    with pytest.raises(ValueError, match="at least 2"):
        bench.exact_sw_draws(toy, 300, 1)
    monkeypatch.setattr(bench, "EXACT_SEED", bench.REF_SEED)  # the first set is then the reference itself
    assert bench.exact_sw_draws(toy, 300, 2)[0] == 0.0


def test_rerun_mixture_rows_replace_their_own_and_drop_the_stale_exact_figures():
    old = {"mixtures": [_row("ring2d", 0.5), _row("rp1", 0.4), _row("rp2", 0.3)], "digits": [{"nfe": 4}],
           "seconds": 9.0}
    bench.exact_pass_rates(old["mixtures"], {m: torch.tensor([0.1, 0.2]) for m in ("ring2d", "rp1", "rp2")})
    old["p_exact_meets_all"] = 1.0
    new = [dict(_row("rp1", 0.2), nfe=n) for n in (4, 2)]
    merged = bench.merge_mixture_rows(old, new)
    assert [(r["mixture"], r["nfe"]) for r in merged["mixtures"]] == [("ring2d", 3), ("rp1", 2), ("rp1", 4), ("rp2", 3)]
    assert [r["sw_untouched_fitted"] for r in merged["mixtures"]] == [0.5, 0.2, 0.2, 0.3]  # rp1's old row gone
    assert "p_exact_meets_all" not in merged and all("p_exact_meets" not in r for r in merged["mixtures"])
    assert merged["mixtures_rerun"] == ["rp1"] and "rows of rp1 were rerun" in bench.markdown({"mmd": dict(merged, digits=[])})
    assert merged["digits"] == [{"nfe": 4}] and "p_exact_meets" in old["mixtures"][0]  # input left as it was
