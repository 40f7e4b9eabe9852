"""Tasks on the bundled models: what the CLI and the benchmarks run on them.

- digits: ``restore_digits`` (inpaint, super-resolve, deblur, MRI with a diffusion prior),
  ``measurement_view``, ``read_digit_png``;
- sunspots: ``sunspot_split``, ``forecast_sunspots`` (TSDiff self-guidance),
  ``forecast_scores`` (CRPS against the seasonal-naive forecast);
- text: ``load_text_model`` (``markov``, the exact ``MarkovText`` oracle, or a bundled
  masked-diffusion text model);
- scaling: ``load_problem`` / ``load_text_problem`` (a model and its reward by name).
"""
from __future__ import annotations

import string

import torch
from torch import Tensor

from .. import inverse
from ..toys import gaussian_mixture
from . import checkpoints as zoo


DIGIT_MODELS = ("digits", "digits-flow")

# --- restoring digits -------------------------------------------------------------------
DIGIT_TASKS = ("inpaint", "superres", "deblur", "mri")
#: self-guidance of a trained eps-network: off at the highest noise levels (where x0_hat's
#: errors grow like 1 / alpha) and read on x0_hat clamped to the data range
GUIDANCE_T_MAX = 0.6
DATA_RANGE = (-1.0, 1.0)


def read_digit_png(path: str) -> Tensor:
    """A digit image ``[1, 1, 8, 8]`` in ``[-1, 1]`` from a PNG of 8x8 pixels or any integer
    multiple (block-averaged), dark ink on light paper (as ``viz.save_image`` writes them)."""
    from ..viz import read_gray_image

    img = read_gray_image(path)
    h, w = img.shape
    if h != w or h % 8:
        raise ValueError(f"{path}: need a square image of 8x8 pixels or a multiple, got {h}x{w}")
    f = h // 8
    ink = 1.0 - img.reshape(8, f, 8, f).mean((1, 3))  # [8, 8] in [0, 1]
    return (2.0 * ink - 1.0).reshape(1, 1, 8, 8).float()


def measurement_view(op: inverse.LinearOperator, y: Tensor) -> Tensor:
    """What to show for a measurement: ``A^+ y`` in image space."""
    return op.pinv(y) if not isinstance(op, inverse.GaussianBlur) else y


#: Gaussian DPS scale per task (tuned on the bundled digits model at noise 0.05: the
#: gradient grows with the number of measurements, and past these values DPS diverges)
DPS_SCALES = {"inpaint": 0.03, "superres": 0.1, "deblur": 0.1, "mri": 0.03}


def restore_digits(model: str, task: str, method: str, x: Tensor, noise_std: float, steps: int | None,
                   seed: int, scale: float | None = None, op: inverse.LinearOperator | None = None,
                   **options) -> tuple[Tensor, Tensor, inverse.LinearOperator, int]:
    """Restore digits ``x`` ``[B, 1, 8, 8]``: measure with the task's operator (or ``op``, e.g.
    an ``Inpaint`` of a drawn mask, whose own ``noise_std`` then applies), then run the
    method on the unconditional model. Returns ``(restored, y, op, nfe)``.

    Defaults: DPS at ``DPS_SCALES[task]`` (unless ``scale``), guided for ``t < 0.6`` on
    ``x0_hat`` clamped to ``[-1, 1]``; RED-Diff on deblurring starts from zeros with
    ``lr = 0.03`` (``A^+ y`` of a blur amplifies the noise)."""
    den = zoo.load(model)  # no label bound: the network uses its null class (unconditional)
    op = inverse.task_operator(task, den.shape, noise_std) if op is None else op
    y = op.measure(x, seed=seed + 1)
    if method == "dps":
        options = {"interval": (0.0, GUIDANCE_T_MAX), "clip": DATA_RANGE, "likelihood": "gaussian", "normalized": False, **options}
    if method == "reddiff" and task == "deblur":
        options = {"init": torch.zeros_like(x), "lr": 0.03, **options}
    scale = DPS_SCALES[task] if scale is None else scale
    out, nfe = inverse.restore(den, op, y, den.shape, method, steps=steps, seed=seed, scale=scale, **options)
    return out.clamp(-1.0, 1.0), y, op, nfe


# --- forecasting sunspots ---------------------------------------------------------------
SUNSPOT_PERIOD = 11  # years: the solar cycle, for the seasonal-naive baseline
FORECAST_METHODS = ("tsdiff", "tsdiff-refine")


def sunspot_split(horizon: int, window: int = 32, end: int | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """``(series, history [1, window - horizon], truth [horizon])`` on the model's scale for a
    forecast whose last year is ``end`` (an index into the yearly series; default its end):
    ``series`` is the series up to ``end``, the last ``horizon`` years of it are the truth to
    forecast from the ``window - horizon`` before."""
    from .data import sunspots_series
    s = sunspots_series(torch.float32)
    end = s.numel() if end is None else int(end)
    if not 0 < horizon < window:
        raise ValueError(f"horizon must be in (0, {window}) for a {window}-year model, got {horizon}")
    if not window <= end <= s.numel():
        raise ValueError(f"forecast end must be in [{window}, {s.numel()}], got {end}")
    s = s[:end]
    hist = s[-window:-horizon].reshape(1, window - horizon)
    return s, hist, s[-horizon:]


def forecast_sunspots(model, horizon: int, method: str, n: int, scale: float, loss: str, steps: int,
                      seed: int, t_max: float = GUIDANCE_T_MAX, end: int | None = None
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forecast samples ``[n, horizon]`` (model scale), with the series, history and truth
    (``sunspot_split``). ``model`` is a bundled model's name or a loaded denoiser."""
    den = zoo.load(model) if isinstance(model, str) else model
    window = int(den.shape[-1])
    series, hist, truth = sunspot_split(horizon, window, end)
    fc = inverse.tsdiff_forecast(den, hist, horizon, n_samples=n, scale=scale, loss=loss, steps=steps, seed=seed,
                                 interval=(0.0, t_max), clip=DATA_RANGE)
    if method == "tsdiff-refine":
        mask = inverse.forecast_mask(window, horizon)
        y = torch.zeros(n, 1, window)
        y[:, :, :window - horizon] = hist
        base = torch.cat([hist.expand(n, 1, -1), fc], -1)
        fc = inverse.tsdiff_refine(den, base, mask, y, steps=steps, seed=seed)[:, :, window - horizon:]
    return fc.reshape(n, horizon), series, hist, truth


def forecast_scores(fc: Tensor, series: Tensor, truth: Tensor) -> tuple[float, float, Tensor]:
    """``(CRPS of the samples fc [n, horizon], MAE of the seasonal-naive forecast, that
    forecast [horizon])`` in sunspot numbers; a point forecast's CRPS is its MAE."""
    from .data import sunspots_from_unit
    horizon = truth.numel()
    naive = inverse.seasonal_naive(series[:-horizon], horizon, SUNSPOT_PERIOD)
    crps = inverse.crps_samples(sunspots_from_unit(fc.double()), sunspots_from_unit(truth.double()))
    return crps, float((sunspots_from_unit(naive) - sunspots_from_unit(truth)).abs().mean()), naive


# --- text models --------------------------------------------------------------------------
MARKOV_ALPHABET = string.ascii_lowercase[:8]


class MarkovText:
    """The built-in oracle for ``--model markov``: an 8-letter, nearly deterministic chain
    (``MarkovChain.cycle(8, 0.9)``; ``a`` is mostly followed by ``b``, ...) with a text codec."""

    def __init__(self):
        from ..toys.markov_chain import MarkovChain

        self.chain = MarkovChain.cycle(len(MARKOV_ALPHABET), 0.9)

    def encode(self, text: str) -> Tensor:
        bad = sorted(set(text) - set(MARKOV_ALPHABET))
        if bad:
            raise ValueError(f"the markov model's alphabet is {MARKOV_ALPHABET!r}; the prompt has {bad}")
        return torch.tensor([MARKOV_ALPHABET.index(ch) for ch in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(MARKOV_ALPHABET[i] if i < len(MARKOV_ALPHABET) else "_" for i in ids)


def load_text_model(name: str):
    """``(model, codec)`` for ``markov`` or a bundled text checkpoint of ``diffinfer.zoo``."""
    if name == "markov":
        codec = MarkovText()
        return codec.chain, codec
    try:
        model = zoo.load(name)
    except Exception as e:  # the zoo may not bundle it (yet)
        raise ValueError(f"cannot load model {name!r} ({type(e).__name__}: {e}); "
                         f"--model markov always works") from e
    if not hasattr(model, "mask_id") or getattr(model, "causal", False):
        raise ValueError(f"{name!r} is not a masked-diffusion text model")
    return model, model


# --- inference-time scaling problems ------------------------------------------------------
TOY_MODELS = ["tilted"] + sorted(gaussian_mixture.PRESETS)
TEXT_MODELS = ("shakespeare-char",)
SCALE_MODELS = TOY_MODELS + list(DIGIT_MODELS) + list(TEXT_MODELS)


def load_problem(model: str, reward_spec: str | None, lam: float):
    """``(den, reward, shape, toy, target)`` for a model name and a reward spec."""
    from ..process import VP
    from ..scaling.verifiers import get_verifier
    if model == "tilted":
        from ..toys.tilted import tilted_example
        prior, measure, target = tilted_example(lam)
        reward = measure if reward_spec in (None, "measurement") else get_verifier(reward_spec, toy=prior)
        return prior.denoiser(VP()), reward, (2,), prior, (target if reward is measure else None)
    if model in gaussian_mixture.PRESETS:
        toy = gaussian_mixture.preset(model)
        return toy.denoiser(VP()), get_verifier(reward_spec or "density", toy=toy), (toy.dim,), toy, None
    if model in DIGIT_MODELS:
        try:
            base = zoo.load(model)
            clf = zoo.load("digits-classifier")
        except Exception as e:  # noqa: BLE001 - report any missing checkpoint plainly
            raise ValueError(f"cannot load bundled model {model!r} or its classifier: {e}") from None
        reward = get_verifier(reward_spec or "class:0", classifier=clf.clean)
        # no label bound: the network uses its null class (unconditional) at every batch size
        return base, reward, tuple(base.shape), None, None
    raise ValueError(f"unknown model {model!r}; valid: {', '.join(SCALE_MODELS)}")


def load_text_problem(model: str, reward_spec: str | None):
    """``(masked model, verifier)`` for a bundled text model and a text reward spec."""
    from ..scaling.text import TEXT_REWARDS, get_text_verifier
    if reward_spec is None:
        raise ValueError(f"text models need --reward; valid: {', '.join(TEXT_REWARDS)}")
    mdm, codec = load_text_model(model)
    return mdm, get_text_verifier(reward_spec, codec.decode)
