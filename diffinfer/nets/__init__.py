"""Tiny networks for the zoo: an MLP, a UNet (and its encoder as a classifier), a DiT with
dense or mixture-of-experts blocks, a 1-D series net, and (in ``char_transformer``) a
bidirectional / causal character transformer, imported lazily so a missing optional
module never breaks the others."""
from .dit import DiT, MoEMLP
from .mlp import MLPDenoiser, TimeLabelEmbedding, sinusoidal_embedding
from .series import SeriesNet
from .unet import UNet, UNetClassifier

__all__ = ["MLPDenoiser", "TimeLabelEmbedding", "sinusoidal_embedding", "UNet", "UNetClassifier",
           "DiT", "MoEMLP", "SeriesNet", "CharTransformer"]


def __getattr__(name):
    if name == "CharTransformer":
        from .char_transformer import CharTransformer
        return CharTransformer
    raise AttributeError(f"module 'diffinfer.nets' has no attribute {name!r}")
