"""diffinfer: one inference engine for diffusion and flow models, continuous and discrete."""
from . import grids, solvers
from .denoiser import PREDICTIONS, Denoiser, DenoiserBase, ModelOutputError, Prediction
from .process import EDM, VE, VP, DiscreteVP, Interpolant, Process, RectifiedFlow, get_process
from .rng import SampleRNG
from .loop import SampleResult, iterate, sample

__version__ = "0.1.0"

__all__ = [
    "Process", "VP", "VE", "EDM", "RectifiedFlow", "DiscreteVP", "Interpolant", "get_process",
    "Denoiser", "DenoiserBase", "Prediction", "PREDICTIONS", "ModelOutputError",
    "SampleRNG", "sample", "iterate", "SampleResult", "solvers", "grids",
]
