"""Exact oracles: Gaussian mixtures (continuous) and Markov chains (discrete)."""
from .gaussian_mixture import GaussianMixture, molrg, preset, ring2d

__all__ = ["GaussianMixture", "ring2d", "molrg", "preset"]

try:  # written alongside the masked-diffusion decoder
    from .markov_chain import MarkovChain  # noqa: F401
    __all__.append("MarkovChain")
except ImportError:  # pragma: no cover
    pass
