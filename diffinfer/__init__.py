"""diffinfer: one inference engine for diffusion and flow models, continuous and discrete."""
from . import grids, solvers
from .denoiser import PREDICTIONS, Denoiser, DenoiserBase, ModelOutputError, Prediction
from .process import EDM, VE, VP, DiscreteVP, Interpolant, Process, RectifiedFlow, get_process
from .rng import SampleRNG
from .loop import SampleResult, iterate, sample

__version__ = "0.1.0"

#: subpackages and modules loaded on first use (``di.toys``, ``di.mdm``, ...): ``import
#: diffinfer`` stays light, and none of them needs an import of its own
LAZY = ("toys", "mdm", "guidance", "zoo", "scaling", "inverse", "invert", "nets", "metrics", "likelihood",
        "classify", "compose", "integrations", "thresholding", "train", "viz", "accel")


def __getattr__(name: str):
    if name in LAZY:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'diffinfer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(LAZY))


__all__ = [
    "Process", "VP", "VE", "EDM", "RectifiedFlow", "DiscreteVP", "Interpolant", "get_process",
    "Denoiser", "DenoiserBase", "Prediction", "PREDICTIONS", "ModelOutputError",
    "SampleRNG", "sample", "iterate", "SampleResult", "solvers", "grids",
]
