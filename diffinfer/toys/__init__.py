"""Exact oracles: Gaussian mixtures (continuous), Markov chains and hidden Markov models (discrete)."""
from .gaussian_mixture import GaussianMixture, molrg, preset, ring2d
from .hmm import HiddenMarkovModel
from .markov_chain import MarkovChain

__all__ = ["GaussianMixture", "ring2d", "molrg", "preset", "MarkovChain", "HiddenMarkovModel"]
