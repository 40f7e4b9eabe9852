"""Exact oracles: Gaussian mixtures (continuous), Markov chains and hidden Markov models (discrete)."""
from .gaussian_mixture import GaussianMixture, molrg, preset, ring2d
from .caption_oracle import CaptionOracle
from .causal_oracle import CausalOracle
from .hmm import HiddenMarkovModel
from .hmm_posterior import (hmm_posterior_log_evidence, hmm_posterior_marginals, hmm_posterior_sample,
                            hmm_sum_posterior_marginals, hmm_sum_posterior_sample, inpainting_likelihood,
                            symmetric_channel_likelihood)
from .markov_chain import MarkovChain

__all__ = ["GaussianMixture", "ring2d", "molrg", "preset", "MarkovChain", "HiddenMarkovModel",
           "hmm_posterior_marginals", "hmm_posterior_sample", "hmm_posterior_log_evidence",
           "symmetric_channel_likelihood", "inpainting_likelihood", "hmm_sum_posterior_marginals",
           "hmm_sum_posterior_sample", "CaptionOracle", "CausalOracle"]
