"""The model zoo: bundled checkpoints and everything specific to them.

- ``checkpoints``: ``load(name)``, ``names()``, ``card(name)``, ``ZooError``, the
  architecture table and the safetensors reader/writer (re-exported here);
- ``recipes``: how each bundled model is trained (``train_model``, ``diffinfer train NAME``);
- ``quality``: the quality measures of the model cards (FD on digits, generative perplexity);
- ``data``: the data sets the models are trained on (digits, sunspots, Shakespeare);
- ``tasks``: model-specific tasks (digit restoration, sunspot forecasts, the scaling problems);
- ``weights/``: the ``NAME.safetensors`` checkpoints and their ``NAME.md`` model cards.
"""
from .checkpoints import (ARCHITECTURES, MODELS, WEIGHTS_DIR, DigitsClassifiers, TextModel, ZooError, build_network,
                          card, card_path, from_checkpoint, grids_path, load, names, read_checkpoint, save_checkpoint,
                          weights_path)

__all__ = [
    "load", "names", "card", "ZooError", "MODELS", "ARCHITECTURES", "WEIGHTS_DIR",
    "weights_path", "card_path", "grids_path", "build_network", "save_checkpoint", "read_checkpoint", "from_checkpoint",
    "DigitsClassifiers", "TextModel",
]
