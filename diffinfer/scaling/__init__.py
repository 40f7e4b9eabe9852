"""Inference-time scaling: verifiers, search, SMC / FK steering, tree search, flows.

Every method is a driver on the solver protocol (``init``/``step``/``select``) and
reports per-sample NFE and verifier calls (``ScalingResult``). See ``budget.run`` for all
methods by name under one budget.
"""
from .budget import METHODS, run
from .common import ScalingResult, Tap
from .flows import FlowSDE, PathConversion, rollover_budget_forcing
from .noise_opt import differentiable_sample, optimize_noise
from .search import best_of_n, guided_search, path_search, random_search, zero_order_search
from .smc import POTENTIALS, effective_sample_size, multinomial_resample, smc, systematic_resample
from .mcgdiff import mcgdiff
from .tree import DiffusionTree, dts, dts_star, tree_result
from .twisted import LinearGaussianTwist, TwistedDenoiser, tds
from .verifiers import (ClassLogProb, Ensemble, LinearGaussian, LogDensity, Normalized, RegionIndicator,
                        Verifier, as_verifier, get_verifier)

__all__ = [
    "METHODS", "run", "ScalingResult", "Tap",
    "FlowSDE", "PathConversion", "rollover_budget_forcing", "differentiable_sample", "optimize_noise",
    "best_of_n", "random_search", "zero_order_search", "path_search", "guided_search",
    "smc", "POTENTIALS", "effective_sample_size", "multinomial_resample", "systematic_resample",
    "DiffusionTree", "dts", "dts_star", "tree_result", "tds", "TwistedDenoiser", "LinearGaussianTwist", "mcgdiff",
    "Verifier", "as_verifier", "get_verifier", "LogDensity", "RegionIndicator", "LinearGaussian",
    "ClassLogProb", "Normalized", "Ensemble",
]
