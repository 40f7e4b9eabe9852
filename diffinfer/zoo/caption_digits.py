"""A tiny captioning task: a masked-diffusion text model writes the name of an 8x8 digit.

LaDiC (Wang et al. 2024, "LaDiC: Are diffusion models really inferior to autoregressive
counterparts for image-to-text generation?") shrunk to one core: the caption of a digit is its
English name (``"seven"``), padded with ``_`` to five characters; a ``CaptionTransformer``
(``nets.caption``: the image as a prefix token before the caption's characters) is trained with
the masked-diffusion loss (``train.masked_diffusion_loss``) on the 1,617 training digits of the
``digits-classifier`` split (``recipes.digits_classifier_split``, one-pixel random shifts) and
scored on its 180 held-out digits: exact match of the caption against the label's name, and
agreement with the bundled ``digits-classifier`` (whose own held-out accuracy is the ceiling).
Captions are decoded by ``mdm.decode`` on the image-bound model (``mdm.Conditioned``) and
optionally refined by ``mdm.back_and_refine`` (LaDiC's Back&Refine).

- ``NAMES``, ``VOCAB``, ``LENGTH``, ``caption_tokens(labels)``, ``caption_digits(tokens)``;
- ``recipe_digits_caption()`` / ``train_digits_caption`` / ``save_digits_caption`` /
  ``load_digits_caption``: the bundled ``zoo/weights/digits-caption.safetensors`` (card
  ``digits-caption.md``; not a ``zoo.load`` name);
- ``CaptionModel``: the network with its vocabulary; ``bind(images)`` gives a masked model;
- ``caption(model, images, ...)``: decode (and refine) captions of a batch of images.
"""
from __future__ import annotations

import json
import pathlib

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .data import CharVocab

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PAD = "_"
LENGTH = max(len(n) for n in NAMES)  # 5
VOCAB = CharVocab(PAD + "".join(sorted(set("".join(NAMES)))))
#: the bundled checkpoint (``zoo/weights/NAME.safetensors`` and ``NAME.md``)
CHECKPOINT = "digits-caption"
NET = {"image_dim": 64, "d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": LENGTH, "image_hidden": 128}


def caption_tokens(labels: Tensor) -> Tensor:
    """``[B, LENGTH]`` ids of the padded names of digit labels ``[B]`` (ints in ``0..9``)."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if ((labels < 0) | (labels > 9)).any():
        raise ValueError("digit labels must lie in 0..9")
    table = torch.stack([VOCAB.encode(n.ljust(LENGTH, PAD)) for n in NAMES])  # [10, LENGTH]
    return table[labels]


def caption_digits(tokens: Tensor) -> Tensor:
    """``[B]`` the digit whose padded name each caption ``[B, LENGTH]`` is exactly, ``-1`` if none."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() != 2 or tokens.shape[1] != LENGTH:
        raise ValueError(f"captions must be [B, {LENGTH}], got shape {tuple(tokens.shape)}")
    table = caption_tokens(torch.arange(10))
    eq = (tokens[:, None, :] == table[None]).all(-1)  # [B, 10]
    return torch.where(eq.any(-1), eq.long().argmax(-1), torch.full((len(tokens),), -1))


class CaptionModel:
    """A ``CaptionTransformer`` with its vocabulary: ``bind(images [B, 1, 8, 8])`` is a masked
    model (``mdm.Conditioned``) whose row ``b`` writes the caption of image ``b``."""

    def __init__(self, net: nn.Module, config: dict | None = None):
        self.net, self.config = net.eval(), config or {}
        self.vocab, self.mask_id, self.vocab_size = VOCAB, VOCAB.mask_id, VOCAB.size

    def bind(self, images: Tensor):
        from ..mdm.conditional import Conditioned
        images = torch.as_tensor(images, dtype=torch.float32)
        return Conditioned(self.net, images.reshape(images.shape[0], -1), self.mask_id, self.vocab_size)

    def decode_text(self, tokens: Tensor) -> list[str]:
        return [self.vocab.decode(row) for row in tokens]


def _split():
    from .data import digits
    from .recipes import digits_classifier_split
    x, y = digits()
    train_idx, held_idx = digits_classifier_split()
    return x, y, train_idx, held_idx


def heldout_digits() -> tuple[Tensor, Tensor]:
    """The 180 held-out digits of the ``digits-classifier`` split: ``(images [180, 1, 8, 8], labels)``."""
    x, y, _, held = _split()
    return x[held], y[held]


def recipe_digits_caption(steps: int = 2000, seed: int = 0):
    """The training recipe (``recipes.Recipe``): masked-diffusion loss (stratified times) on
    (image, padded name) pairs of the training split, batch 128, one-pixel random shifts."""
    from ..nets.caption import CaptionTransformer
    from ..train import TrainConfig, masked_diffusion_loss
    from .recipes import Recipe
    x, y, train_idx, _ = _split()
    xs, caps = x[train_idx], caption_tokens(y[train_idx])
    torch.manual_seed(seed)
    net = CaptionTransformer(VOCAB.size, **NET)
    batch = 128

    def loss_fn(model, gen):
        idx = torch.randint(0, xs.shape[0], (batch,), generator=gen)
        pad = F.pad(xs[idx], (1, 1, 1, 1), value=-1.0)
        dx, dy = torch.randint(0, 3, (2,), generator=gen).tolist()
        img = pad[:, :, dy:dy + 8, dx:dx + 8].reshape(batch, -1)
        return masked_diffusion_loss(lambda tok: model["net"](tok, img), caps[idx], VOCAB.mask_id,
                                     generator=gen, stratified=True)

    cfg = TrainConfig(steps=steps, lr=2e-3, warmup=100, ema_decay=0.995, seed=seed, checkpoint_every=0)
    config = {"kind": "caption", "vocab": VOCAB.chars, "mask_id": VOCAB.mask_id, "length": LENGTH,
              "batch": batch, "steps": steps, "seed": seed,
              "split": "digits_classifier_split (1,617 train, 180 held out), one-pixel shifts",
              "networks": {"net": {"arch": "caption-transformer", "kwargs": dict(NET, vocab_size=VOCAB.size)}}}
    return Recipe({"net": net}, loss_fn, cfg, config)


def train_digits_caption(steps: int = 2000, seed: int = 0, progress: bool = False):
    """``(CaptionModel with the EMA weights, losses, config)`` trained by the recipe."""
    from ..train import fit
    recipe = recipe_digits_caption(steps, seed)
    res = fit(nn.ModuleDict(recipe.nets), recipe.loss_fn, recipe.cfg, progress=progress, desc="digits caption")
    tail = res.losses[-200:]
    config = dict(recipe.config, final_loss=sum(tail) / len(tail))
    return CaptionModel(res.ema_model()["net"], config), res.losses, config


def checkpoint_path() -> pathlib.Path:
    from .checkpoints import WEIGHTS_DIR
    return WEIGHTS_DIR / f"{CHECKPOINT}.safetensors"


def save_digits_caption(path=None, steps: int = 2000, seed: int = 0, progress: bool = True):
    """Train (``train_digits_caption``) and write the EMA weights and config atomically as
    safetensors (weights only). Returns ``(path, config)``."""
    from safetensors.torch import save_file
    from ..atomic import atomic_path
    model, _, config = train_digits_caption(steps, seed, progress)
    path = pathlib.Path(path) if path is not None else checkpoint_path()
    tensors = {k: v.detach().contiguous().clone() for k, v in model.net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"config": json.dumps(config)})
    return path, config


def load_digits_caption(path=None) -> CaptionModel:
    """The bundled caption model (weights loaded strictly)."""
    from safetensors import safe_open
    from ..nets.caption import CaptionTransformer
    from .checkpoints import ZooError
    path = pathlib.Path(path) if path is not None else checkpoint_path()
    if not path.exists():
        raise ZooError(f"checkpoint {path} does not exist (retrain it with "
                       f"`python -m diffinfer.zoo.caption_digits`)")
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    kwargs = config["networks"]["net"]["kwargs"]
    if config.get("vocab") != VOCAB.chars:
        raise ZooError(f"checkpoint {path} has vocabulary {config.get('vocab')!r}, expected {VOCAB.chars!r}")
    net = CaptionTransformer(**kwargs)
    net.load_state_dict(state, strict=True)
    return CaptionModel(net.requires_grad_(False), config)


@torch.no_grad()
def caption(model, images: Tensor, policy="low-confidence", steps: int | None = None, temperature: float = 0.0,
            seed: int = 0, refine: dict | None = None):
    """Captions ``[B, LENGTH]`` of ``images`` ``[B, 1, 8, 8]`` and the batched model calls:
    ``mdm.decode`` on ``model.bind(images)`` (``steps`` default: one token per step), then, if
    ``refine`` (options of ``mdm.back_and_refine``, e.g. ``{"count": 2}``), Back&Refine with
    the same policy and temperature. Returns ``(tokens, nfe)``."""
    from ..mdm.decode import decode
    from ..mdm.refine import back_and_refine
    bound = model.bind(images)
    out = decode(bound, length=LENGTH, batch=len(images), policy=policy, steps=steps, temperature=temperature,
                 seed=seed)
    if refine is None:
        return out.tokens, out.nfe
    options = {"policy": policy, "temperature": temperature, "seed": seed + 1000, **refine}
    ref = back_and_refine(bound, out, **options)
    return ref.tokens, out.nfe + ref.nfe


if __name__ == "__main__":  # retrain the bundled checkpoint
    torch.set_num_threads(1)
    p, cfg = save_digits_caption()
    print(p, f"final loss {cfg['final_loss']:.4f}")
