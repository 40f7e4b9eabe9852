"""A model spec -> a row drawer: ``draw(rows) -> {"x": [len(rows), ...]}`` (continuous) or
``{"tokens": [len(rows), L]}`` (masked text), where row ``i`` draws every random number
from its own stream ``(seed, i)``:

- continuous models: ``diffinfer.loop.sample(den, shape, seed=(seed, rows))``;
- masked models: ``diffinfer.mdm.decode(model, batch=len(rows), seed=(seed, rows))``.

Specs: a toy (``ring2d``, ``molrg``: exact mixture denoisers under ``VP``, float64), a bundled
denoiser (``digits``, ``digits-flow``, ``sunspots``), a bundled masked model
(``shakespeare-char``) or the ``markov`` oracle; ``module:function`` (called with no
arguments, returning a ``DenoiserBase`` or a masked model); ``diffusers:PATH`` (a pipeline
saved with ``save_pretrained``, loaded with ``local_files_only=True``, bridged by
``integrations.diffusers.from_diffusers``)."""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..denoiser import DenoiserBase, ModelOutputError, networks_under

#: defaults when the configuration leaves them open
DEFAULT_SOLVER, DEFAULT_STEPS, DEFAULT_POLICY = "dpmpp-2m", 10, "random"


@dataclass
class RowDrawer:
    """``kind``: ``"continuous"`` or ``"text"``; ``resolved``: the defaults this model filled
    (solver, steps, shape, dtype, length); ``fingerprint``: a hash of the weights (``None``
    for models defined by code); ``draw(rows)`` -> ``{name: [len(rows), ...]}``; ``image(x)``
    -> an ``[H, W]`` grid in ``[0, 1]`` for ``--png`` (or ``None``); ``texts(tokens)`` -> strings."""

    kind: str
    resolved: dict
    fingerprint: str | None
    draw: Callable[[list[int]], dict[str, Tensor]]
    image: Callable[[Tensor], Tensor] | None = None
    texts: Callable[[Tensor], list[str]] | None = None


def _zoo_models():
    from .. import zoo
    from ..toys import gaussian_mixture
    from ..zoo.tasks import DIGIT_MODELS, TEXT_MODELS
    denoisers = [m for m in (*DIGIT_MODELS, "sunspots") if m in zoo.MODELS]
    texts = [m for m in TEXT_MODELS if m in zoo.MODELS]
    return sorted(gaussian_mixture.PRESETS), denoisers, ["markov", *texts]


def model_names() -> list[str]:
    """Every bundled spec ``generate`` accepts (plus ``module:function`` and ``diffusers:PATH``)."""
    toys, denoisers, texts = _zoo_models()
    return toys + denoisers + texts


def _hash_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def weights_fingerprint(obj) -> str | None:
    """A hash of every parameter and buffer (names, dtypes, shapes, bytes) of the networks
    under ``obj``; ``None`` when it holds none (a model defined by code)."""
    modules = networks_under(obj)
    if not modules:
        return None
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _check_finite(x: Tensor, rows: list[int]) -> Tensor:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = [rows[i] for i in torch.nonzero(~torch.isfinite(x.flatten(1)).all(1)).flatten().tolist()]
        raise ModelOutputError(f"rows {bad[:10]} came out NaN or infinite (solver, steps or model broken); "
                               f"nothing was written for rows {rows[0]}..{rows[-1]}")
    return x


# --- continuous models -------------------------------------------------------------------
def _continuous(config, den: DenoiserBase, shape, fingerprint, dtype=None, bind=None, image=None) -> RowDrawer:
    from .. import solvers
    from ..loop import model_placement, sample
    solver = config.solver or DEFAULT_SOLVER
    if solver not in solvers.names():
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(solvers.names())}")
    solvers.get(solver, **config.options)  # unknown options fail now, before any work
    if config.length is not None:
        raise ValueError(f"--length applies to text models, not {config.model}")
    if config.shape is not None and shape is not None and tuple(config.shape) != tuple(shape):
        raise ValueError(f"--shape {tuple(config.shape)} disagrees with the model's {tuple(shape)}")
    shape = tuple(config.shape or shape or ())
    if not shape:
        raise ValueError(f"{config.model} has no .shape: give the shape of one sample (--shape C,H,W)")
    steps = config.steps or DEFAULT_STEPS
    if dtype is None:
        dtype = model_placement(den)[1] or torch.float32

    def draw(rows: list[int]) -> dict[str, Tensor]:
        d = bind(rows) if bind is not None else den
        res = sample(d, shape=(len(rows), *shape), solver=solver, steps=steps, seed=(config.seed, list(rows)),
                     dtype=dtype, **config.options)
        return {"x": _check_finite(res.x.detach(), rows)}

    if config.png and image is None:
        raise ValueError(f"--png needs a one-channel image model ([1, H, W] samples); {config.model} draws {shape}")
    resolved = {"kind": "continuous", "solver": solver, "steps": steps, "shape": list(shape),
                "dtype": str(dtype).replace("torch.", "")}
    return RowDrawer("continuous", resolved, fingerprint, draw, image=image)


def _digit_image(x: Tensor) -> Tensor:
    from ..viz import digit_grid
    return digit_grid(x, nrow=min(int(x.shape[0]), 16))


def _image_fn(shape):
    return _digit_image if len(shape) == 3 and shape[0] == 1 else None


def _bundled_denoiser(config) -> RowDrawer:
    from .. import zoo
    from ..guidance import ClassifierFreeGuidance
    base = zoo.load(config.model)
    shape = tuple(base.shape)
    null = base.config.get("null_label") if hasattr(base, "config") else None
    conditional = null is not None
    if not conditional and (config.label is not None or config.guidance is not None):
        raise ValueError(f"--label / --guidance apply to the class-conditional digits models, not {config.model}")
    if config.label is not None and not 0 <= config.label < int(null):
        raise ValueError(f"--label must be a class 0..{int(null) - 1}, got {config.label}")
    bind = None
    if conditional:
        null = int(null)

        def bind_rows(rows):
            idx = torch.as_tensor(rows, dtype=torch.int64)
            if config.label is not None:
                lab = torch.full_like(idx, int(config.label))
            elif config.guidance is not None:
                lab = idx % null  # guided rows need a class: row i gets class i % 10
            else:
                lab = torch.full_like(idx, null)
            d = base.bind(label=lab)
            return ClassifierFreeGuidance(d, config.guidance, null_label=null) if config.guidance is not None else d
        bind = bind_rows
    fp = _hash_file(zoo.weights_path(config.model))
    return _continuous(config, base, shape, fp, bind=bind, image=_image_fn(shape))


def _toy(config) -> RowDrawer:
    from ..process import VP
    from ..toys import gaussian_mixture
    if config.label is not None or config.guidance is not None:
        raise ValueError(f"--label / --guidance do not apply to the toy {config.model}")
    toy = gaussian_mixture.preset(config.model)
    return _continuous(config, toy.denoiser(VP()), (toy.dim,), None, dtype=torch.float64)


# --- masked text models ------------------------------------------------------------------
def _text(config, model, codec, fingerprint) -> RowDrawer:
    from ..mdm.decode import decode
    from ..mdm.model import as_masked_model
    from ..mdm.policies import policy_names
    if config.label is not None or config.guidance is not None or config.shape is not None or config.png:
        raise ValueError(f"--label, --guidance, --shape and --png do not apply to the text model {config.model}")
    as_masked_model(model)
    policy = config.solver or DEFAULT_POLICY
    if policy not in policy_names():
        raise ValueError(f"unknown unmasking policy {policy!r} for text model {config.model}; "
                         f"valid: {', '.join(policy_names())}")
    max_len = getattr(model, "max_len", None)
    length = config.length or max_len
    if length is None:
        raise ValueError(f"{config.model} has no max_len: give the tokens per row (--length)")
    if max_len is not None and length > int(max_len):
        raise ValueError(f"--length {length} exceeds {config.model}'s max_len {int(max_len)}")
    steps = config.steps or int(length)
    if steps > length:
        raise ValueError(f"--steps {steps}: at most one step per token ({length})")

    def draw(rows: list[int]) -> dict[str, Tensor]:
        res = decode(model, length=int(length), policy=policy, steps=steps, batch=len(rows),
                     seed=(config.seed, list(rows)), **config.options)
        return {"tokens": res.tokens[:, -int(length):].to(torch.int64)}

    texts = None
    if codec is not None and callable(getattr(codec, "decode", None)):
        texts = lambda tokens: [codec.decode(row) for row in tokens.tolist()]  # noqa: E731
    resolved = {"kind": "text", "solver": policy, "steps": steps, "length": int(length)}
    return RowDrawer("text", resolved, fingerprint, draw, texts=texts)


def _bundled_text(config) -> RowDrawer:
    from .. import zoo
    from ..zoo.tasks import load_text_model
    model, codec = load_text_model(config.model)
    fp = _hash_file(zoo.weights_path(config.model)) if config.model in zoo.MODELS else None
    return _text(config, model, codec, fp)


# --- user models -------------------------------------------------------------------------
def _is_masked(obj) -> bool:
    return callable(getattr(obj, "logits", None)) and hasattr(obj, "mask_id")


def _from_object(config, obj, where: str) -> RowDrawer:
    if isinstance(obj, DenoiserBase):
        return _continuous(config, obj, getattr(obj, "shape", None), weights_fingerprint(obj),
                           image=_image_fn(tuple(config.shape or getattr(obj, "shape", None) or ())))
    if _is_masked(obj):
        return _text(config, obj, obj, weights_fingerprint(obj))
    raise ValueError(f"{where} returned a {type(obj).__name__}: expected a diffinfer Denoiser (or wrapper) "
                     f"or a masked model (logits(tokens) and mask_id)")


def _user_function(config) -> RowDrawer:
    module, _, name = config.model.partition(":")
    if not module or not name:
        raise ValueError(f"model {config.model!r}: write module:function (e.g. mypkg.models:build)")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"model {config.model!r}: cannot import {module!r} ({e})") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise ValueError(f"model {config.model!r}: {module!r} has no function {name!r}")
    return _from_object(config, fn(), config.model)


def _diffusers(config) -> RowDrawer:
    import pathlib
    path = config.model.split(":", 1)[1]
    if not pathlib.Path(path).is_dir():
        raise ValueError(f"model {config.model!r}: {path!r} is not a directory (a pipeline saved with save_pretrained)")
    try:
        from diffusers import DiffusionPipeline
    except ImportError:
        raise ValueError("diffusers:PATH needs diffusers (pip install 'diffinfer[hf]')") from None
    from ..integrations.diffusers import from_diffusers
    pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    cfg = net.config
    shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
    den = from_diffusers(pipe)
    return _continuous(config, den, shape, weights_fingerprint(net), image=_image_fn(shape))


def resolve(config) -> RowDrawer:
    """The row drawer of ``config.model``; every option is checked against the model here,
    before any row is drawn (unknown names list the valid ones)."""
    spec = config.model
    if spec.startswith("diffusers:"):
        return _diffusers(config)
    if ":" in spec:
        return _user_function(config)
    toys, denoisers, texts = _zoo_models()
    if spec in toys:
        return _toy(config)
    if spec in denoisers:
        return _bundled_denoiser(config)
    if spec in texts:
        return _bundled_text(config)
    valid = ", ".join(toys + denoisers + texts + ["module:function", "diffusers:PATH"])
    from .. import zoo
    if spec in zoo.MODELS:
        raise ValueError(f"model {spec!r} does not generate samples; valid: {valid}")
    raise ValueError(f"unknown model {spec!r}; valid: {valid}")
