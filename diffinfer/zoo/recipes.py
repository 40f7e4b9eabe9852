"""How each bundled model is trained: the recipes behind ``diffinfer train NAME``.

- ``Recipe``: the networks, the loss, the ``TrainConfig`` and the zoo config of one model;
- ``recipe_digits``, ``recipe_digits_flow``, ``recipe_digits_classifier``, ``recipe_sunspots``,
  ``recipe_shakespeare_char``, ``recipe_shakespeare_ar`` and ``RECIPES`` (name -> recipe);
- ``digits_classifier_split``: the train / held-out split of the digits classifiers;
- ``train_model(name)``: train with the recipe (``train.fit``) and write the EMA weights and
  their config to ``NAME.safetensors`` in a user directory (``user_dir()``; never into the
  installed package unless ``replace_bundled``).
"""
from __future__ import annotations

import os
import pathlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..denoiser import Denoiser
from ..train import (TrainConfig, autoregressive_loss, denoising_loss, fit, masked_diffusion_loss,
                     sample_times)
from .checkpoints import WEIGHTS_DIR, read_checkpoint, save_checkpoint, weights_path


@dataclass
class Recipe:
    """``nets`` (trained together as one ``ModuleDict``), ``loss_fn(model, gen)``, the
    training config, the zoo ``config`` written into the checkpoint's metadata, and an
    optional ``evaluate(model) -> {metric: value}`` on held-out data for the learning curve
    (``train.fit``'s ``evaluate``, every ``cfg.eval_every`` steps)."""

    nets: dict
    loss_fn: Callable
    cfg: TrainConfig
    config: dict
    evaluate: Callable | None = None


def _drop_labels(labels: Tensor, p: float, null: int, generator: torch.Generator) -> Tensor:
    """Replace each label by the null class with probability ``p`` (classifier-free
    guidance training, Ho & Salimans 2022)."""
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(labels, null), labels)


def _digits_denoiser_recipe(process_name: str, prediction: str, seed: int, steps: int,
                            ema_decay: float) -> Recipe:
    from .data import digits
    from ..nets.unet import UNet
    from ..process import get_process
    x, y = digits()
    unet_kwargs = {"in_channels": 1, "channels": [48, 96, 96], "emb_dim": 128, "num_classes": 10}
    net = UNet(**unet_kwargs)
    process = get_process(process_name)
    batch, p_uncond = 128, 0.1

    def loss_fn(model, gen):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        labels = _drop_labels(y[idx], p_uncond, 10, gen)
        den = Denoiser(model["net"], process, prediction, cond={"label": labels}, check=False)
        return denoising_loss(den, x[idx], generator=gen)

    cfg = TrainConfig(steps=steps, lr=1e-3, warmup=200, ema_decay=ema_decay, seed=seed)
    config = {"kind": "denoiser", "process": process_name, "prediction": prediction, "shape": [1, 8, 8],
              "num_classes": 10, "null_label": 10, "label_dropout": p_uncond, "batch": batch,
              "networks": {"net": {"arch": "unet", "kwargs": unet_kwargs}}}
    return Recipe({"net": net}, loss_fn, cfg, config)


def recipe_digits() -> Recipe:
    """Class-conditional VP (linear) eps-prediction UNet with 10% label dropout."""
    return _digits_denoiser_recipe("vp-linear", "eps", seed=0, steps=3000, ema_decay=0.999)


def recipe_digits_flow() -> Recipe:
    """Rectified-flow velocity UNet (class-conditional, 10% label dropout)."""
    return _digits_denoiser_recipe("rectified-flow", "velocity", seed=1, steps=1000, ema_decay=0.995)


def recipe_digits_classifier() -> Recipe:
    """A noise-conditional classifier on VP-noised digits (ADM-style, for classifier
    guidance and verification) and a clean classifier (features for ``fd_digits``), both
    trained on 90% of the digits with one-pixel random shifts; 10% held out."""
    from .data import digits
    from ..nets.unet import UNetClassifier
    from ..process import get_process
    x, y = digits()
    train_idx, _ = digits_classifier_split()
    kw = {"in_channels": 1, "channels": [32, 64, 64], "emb_dim": 128, "num_classes": 10}
    noisy = UNetClassifier(**kw, time_conditional=True)
    clean = UNetClassifier(**kw, time_conditional=False)
    process = get_process("vp-linear")
    batch = 128

    def shift(images, gen):
        pad = F.pad(images, (1, 1, 1, 1), value=-1.0)
        dx, dy = torch.randint(0, 3, (2,), generator=gen).tolist()
        return pad[:, :, dy:dy + 8, dx:dx + 8]

    def loss_fn(model, gen):
        idx = train_idx[torch.randint(0, train_idx.numel(), (batch,), generator=gen)]
        x0 = shift(x[idx], gen)
        t = sample_times(process, batch, gen)
        x_t = process.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
        return (F.cross_entropy(model["noisy"](x_t, t.float()), y[idx])
                + F.cross_entropy(model["clean"](x0), y[idx]))

    cfg = TrainConfig(steps=3000, lr=1e-3, warmup=100, ema_decay=0.995, seed=2, weight_decay=1e-4)
    config = {"kind": "classifiers", "process": "vp-linear", "shape": [1, 8, 8], "num_classes": 10,
              "split_seed": 1234, "train_fraction": 0.9,
              "networks": {"noisy": {"arch": "unet-classifier", "kwargs": {**kw, "time_conditional": True}},
                           "clean": {"arch": "unet-classifier", "kwargs": {**kw, "time_conditional": False}}}}
    return Recipe({"noisy": noisy, "clean": clean}, loss_fn, cfg, config)


def digits_classifier_split() -> tuple[Tensor, Tensor]:
    """Indices (train, held out) of the digits split the classifiers use."""
    n = 1797  # scikit-learn's digits
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1234))
    n_train = int(0.9 * n)
    return perm[:n_train], perm[n_train:]


def recipe_sunspots() -> Recipe:
    """Unconditional VP (linear) eps-prediction ``SeriesNet`` on the 224 windows of 32 years
    that end before the held-out last ``SUNSPOTS_HELDOUT_YEARS`` (1955-2008) of the yearly
    sunspot series (scaled to ``[-1, 1]``)."""
    from .data import sunspots_windows
    from ..nets.series import SeriesNet
    from ..process import get_process
    x = sunspots_windows(32, split="train")
    kwargs = {"in_channels": 1, "channels": 64, "depth": 6, "emb_dim": 64, "num_classes": 0}
    net = SeriesNet(**kwargs)
    process = get_process("vp-linear")
    batch = 64

    def loss_fn(model, gen):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        return denoising_loss(Denoiser(model["net"], process, "eps", check=False), x[idx], generator=gen)

    cfg = TrainConfig(steps=1500, lr=1e-3, warmup=100, ema_decay=0.995, seed=3)
    config = {"kind": "denoiser", "process": "vp-linear", "prediction": "eps", "shape": [1, 32],
              "window": 32, "scale": "2 x / 200 - 1 (sunspot number to [-1, 1])", "batch": batch,
              "networks": {"net": {"arch": "series", "kwargs": kwargs}}}
    return Recipe({"net": net}, loss_fn, cfg, config)


SHAKESPEARE_NET = {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_len": 256}


def _shakespeare_recipe(causal: bool, steps: int, seed: int, lr: float = 2e-3, warmup: int = 100,
                        init_from: str | None = None, eval_every: int = 0) -> Recipe:
    from .data import random_windows, shakespeare_tokens, shakespeare_vocab
    from ..mdm.model import shift_right
    from ..nets.char_transformer import CharTransformer
    vocab = shakespeare_vocab()
    stream = shakespeare_tokens("train")
    kwargs = {"vocab_size": vocab.size, **SHAKESPEARE_NET, "causal": causal}
    shift = init_from is not None  # Dream's logit shift keeps the causal model's next-token head
    net = CharTransformer(**kwargs)
    if init_from is not None:  # start from another bundled model with the same shapes
        net.load_state_dict(read_checkpoint(weights_path(init_from))[0]["net"].state_dict())
    batch, length = 16, SHAKESPEARE_NET["max_len"]

    def loss_fn(model, gen):
        tokens = random_windows(stream, length + (1 if causal else 0), batch, gen)  # [B, L(+1)]
        if causal:
            return autoregressive_loss(model["net"], tokens)
        net = model["net"]
        logits = (lambda x: shift_right(net(x))) if shift else net
        return masked_diffusion_loss(logits, tokens, vocab.mask_id, generator=gen, stratified=True)

    cfg = TrainConfig(steps=steps, lr=lr, warmup=warmup, ema_decay=0.99, seed=seed,
                      final_lr_fraction=0.05, checkpoint_every=100, eval_every=eval_every)

    def evaluate(model):
        net = model["net"]
        from .quality import heldout_windows, masked_elbo
        logits = (lambda x: shift_right(net(x))) if shift else net
        return {"heldout_elbo": masked_elbo(logits, heldout_windows(32), vocab.mask_id, draws=2)}

    config = {"kind": "text", "causal": causal, "vocab": vocab.chars, "mask_id": vocab.mask_id,
              "batch": batch, "length": length, "split": "first 90% of each play (train), rest held out",
              "init_from": init_from, "shift_logits": shift,
              "networks": {"net": {"arch": "char-transformer", "kwargs": kwargs}}}
    return Recipe({"net": net}, loss_fn, cfg, config, None if causal else evaluate)


def recipe_shakespeare_char() -> Recipe:
    """Bidirectional time-free character transformer with the masked-diffusion loss,
    initialised from ``shakespeare-ar``'s weights with Dream's logit shift (Ye et al. 2025;
    an AR-initialised masked-diffusion model as DiffuLLaMA, Gong et al. 2024): the shift keeps
    the causal model's next-token head, so the held-out ELBO starts at 3.37 nats per character
    instead of 4.19 (unshifted) and falls below the unshifted model's 1,500-step value within
    50 steps. From random weights the model sat at the unigram entropy for 700 steps."""
    return _shakespeare_recipe(causal=False, steps=10000, seed=4, lr=1.5e-3, warmup=50, init_from="shakespeare-ar",
                               eval_every=500)


def recipe_shakespeare_ar() -> Recipe:
    """Causal character transformer with next-token cross-entropy (the scorer)."""
    return _shakespeare_recipe(causal=True, steps=800, seed=5)


SHAKESPEARE_BLOCK = 16


def recipe_shakespeare_block() -> Recipe:
    """Block-diffusion character transformer (SDAR / BD3-LM, ``mdm.block_diffusion``): causal
    across blocks of 16 characters, bidirectional within one, trained with the block-diffusion
    loss (each block masked at its own time, denoised given the clean earlier blocks) on windows
    of 128 characters. As SDAR converts an AR model, it starts from ``shakespeare-ar``'s weights
    with Dream's logit shift (a block's first token is then the AR model's next-token prediction);
    from random weights a first run sat near the unigram entropy (3.2 nats) after 500 steps."""
    from .data import random_windows, shakespeare_tokens, shakespeare_vocab
    from ..mdm.block_diffusion import block_diffusion_loss
    from ..nets.char_transformer import CharTransformer
    vocab = shakespeare_vocab()
    stream = shakespeare_tokens("train")
    kwargs = {"vocab_size": vocab.size, **SHAKESPEARE_NET, "attention": "block-causal", "block": SHAKESPEARE_BLOCK}
    net = CharTransformer(**kwargs)
    net.load_state_dict(read_checkpoint(weights_path("shakespeare-ar"))[0]["net"].state_dict())
    batch, length = 16, 128

    def loss_fn(model, gen):
        tokens = random_windows(stream, length, batch, gen)  # [B, L]
        return block_diffusion_loss(model["net"], tokens, vocab.mask_id, generator=gen, shift=True)

    cfg = TrainConfig(steps=4000, lr=1e-3, warmup=50, ema_decay=0.99, seed=6,
                      final_lr_fraction=0.05, checkpoint_every=100, eval_every=500)

    def evaluate(model):
        from .quality import heldout_windows
        held = heldout_windows(32, length)  # [32, 128]
        return {"heldout_elbo": sum(float(block_diffusion_loss(model["net"], held, vocab.mask_id, shift=True,
                                                                generator=torch.Generator().manual_seed(k)))
                                    for k in range(2)) / 2}

    config = {"kind": "text", "causal": False, "vocab": vocab.chars, "mask_id": vocab.mask_id,
              "batch": batch, "length": length, "split": "first 90% of each play (train), rest held out",
              "init_from": "shakespeare-ar", "shift_logits": True,
              "loss": "block diffusion (mdm.block_diffusion_loss, shift=True)",
              "networks": {"net": {"arch": "char-transformer", "kwargs": kwargs}}}
    return Recipe({"net": net}, loss_fn, cfg, config, evaluate)


RECIPES: dict[str, Callable[[], Recipe]] = {
    "digits": recipe_digits,
    "digits-flow": recipe_digits_flow,
    "digits-classifier": recipe_digits_classifier,
    "shakespeare-char": recipe_shakespeare_char,
    "shakespeare-ar": recipe_shakespeare_ar,
    "shakespeare-block": recipe_shakespeare_block,
    "sunspots": recipe_sunspots,
}


def user_dir() -> pathlib.Path:
    """Where ``diffinfer train`` writes by default: ``$DIFFINFER_HOME``, else
    ``$XDG_DATA_HOME/diffinfer``, else ``~/.local/share/diffinfer``."""
    if os.environ.get("DIFFINFER_HOME"):
        return pathlib.Path(os.environ["DIFFINFER_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or pathlib.Path.home() / ".local" / "share"
    return pathlib.Path(base).expanduser() / "diffinfer"


def default_out_dir() -> pathlib.Path:
    """Default directory of trained models (``user_dir() / "models"``)."""
    return user_dir() / "models"


def default_work_dir() -> pathlib.Path:
    """Default directory of resumable training checkpoints (``user_dir() / "train"``)."""
    return user_dir() / "train"


#: seconds of work between two checkpoints when no step interval is given
DEFAULT_CHECKPOINT_SECONDS = 180.0


def _is_bundled_dir(directory: pathlib.Path) -> bool:
    try:
        return directory.resolve() == WEIGHTS_DIR.resolve()
    except OSError:
        return False


def train_model(name: str, steps: int | None = None, out_dir=None, work_dir=None, resume: bool = True,
                progress: bool = True, threads: int | None = None, checkpoint_every: int | None = None,
                checkpoint_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
                replace_bundled: bool = False) -> pathlib.Path:
    """Train bundled model ``name`` with its recipe and write ``NAME.safetensors`` (the EMA
    weights, with the config and training summary in the metadata) to ``out_dir``
    (default ``default_out_dir()``, a user directory). Writing into the package's
    ``zoo/weights`` (replacing the bundled checkpoint) needs ``replace_bundled=True``.
    The resumable checkpoint ``NAME.pt`` lives in ``work_dir`` (default
    ``default_work_dir()``), written every ``checkpoint_every`` steps (default: the
    recipe's), every ``checkpoint_seconds`` of work and on SIGINT / SIGTERM; a rerun resumes
    it when the configuration matches (``train.ResumeMismatch`` otherwise) and ends bitwise
    where an uninterrupted run would. Every file is written atomically."""
    if name not in RECIPES:
        raise ValueError(f"no training recipe for {name!r}; valid: {', '.join(sorted(RECIPES))}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 0):
        raise ValueError(f"checkpoint_every must be an int >= 0 (steps), got {checkpoint_every!r}")
    out = pathlib.Path(out_dir).expanduser() if out_dir else default_out_dir()
    if _is_bundled_dir(out) and not replace_bundled:
        raise ValueError(f"{out} holds the bundled checkpoints; pass --replace-bundled (replace_bundled=True) "
                         f"to overwrite {name}.safetensors there, or choose another --out")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is a file")
    work = pathlib.Path(work_dir).expanduser() if work_dir else default_work_dir()
    if work.exists() and not work.is_dir():
        raise ValueError(f"work directory {work} is a file")
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)  # the networks' initial weights (built by the recipe), so a retrain from scratch is determined
    recipe = RECIPES[name]()
    if steps is not None:
        recipe.cfg.steps = int(steps)
    if checkpoint_every is not None:
        recipe.cfg.checkpoint_every = int(checkpoint_every)
    recipe.cfg.checkpoint_seconds = checkpoint_seconds
    model = nn.ModuleDict(recipe.nets)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = fit(model, recipe.loss_fn, recipe.cfg, checkpoint=work / f"{name}.pt", resume=resume,
                 progress=progress, desc=name, run_config={"recipe": name, "config": recipe.config},
                 evaluate=recipe.evaluate)
    final = result.ema_model()
    tail = result.losses[-200:]
    config = dict(recipe.config)
    config["training"] = {"steps": result.step, "seed": recipe.cfg.seed, "lr": recipe.cfg.lr,
                          "ema_decay": recipe.cfg.ema_decay,
                          "final_loss": sum(tail) / max(1, len(tail)),
                          "wall_seconds_last_session": round(time.perf_counter() - start, 1),
                          "train_seconds": round(result.train_seconds, 1),
                          "history": result.history,
                          "command": f"diffinfer train {name}"}
    return save_checkpoint(out / f"{name}.safetensors", dict(final.items()), config)
