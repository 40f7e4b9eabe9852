"""diffusers models and schedulers as diffinfer objects, and diffinfer solvers as a diffusers
scheduler.

- ``from_diffusers(pipe_or_model, scheduler=None)``: a ``Denoiser`` for a diffusers UNet or
  transformer: the process from the scheduler's config (a float64 ``alphas_cumprod`` table
  -> ``DiscreteVP``, zero-terminal-SNR tables included; flow-matching schedulers ->
  ``RectifiedFlow``), the prediction type (``epsilon`` -> ``eps``, ``v_prediction`` -> ``v``,
  ``sample`` -> ``x0``, ``flow_prediction`` / flow schedulers -> ``velocity``), the network's
  time input (the training-timestep index ``t N - 1``, ``t N`` for flows, ``t`` for Flux),
  the conditioning keys (``den.cond_keys``, from the network's ``forward``), the scheduler's
  own grid as ``den.default_ts(steps)`` and ``clip_sample`` / dynamic thresholding as
  ``diffinfer.thresholding`` wrappers.
- ``scheduler_grid(scheduler, steps, mu=None)``: the scheduler's own timesteps as a diffinfer
  grid (its ``sigmas`` mapped to ``t`` where it has them, clamped to ``[0, 1]``; else its
  integer timesteps ``k`` at ``(k + 1) / N`` and its final ``alpha`` (``set_alpha_to_one``)).
- ``flow_mu(scheduler, image_seq_len)``: the resolution-dependent shift of dynamic-shifting
  flow schedulers (Flux, SD3.5), as their pipelines compute it.
- ``DiffinferScheduler`` (``diffinfer.integrations.diffusers_scheduler``): any one-call-per-step
  diffinfer solver on any diffinfer grid as a drop-in ``pipe.scheduler``.

diffusers is imported only inside these functions (and by ``diffusers_scheduler``), never
at ``import diffinfer``. Nothing here downloads: build or load the pipeline yourself.
"""
from __future__ import annotations

import copy
import inspect
import math

import torch
from torch import Tensor

from ..denoiser import Denoiser, DenoiserBase
from ..grids.builders import validate
from ..process import DiscreteVP, Process, RectifiedFlow, as_time, beta_table

_F64 = torch.float64

#: diffusers ``prediction_type`` -> diffinfer prediction
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}


def config_of(scheduler_or_config) -> dict:
    """A scheduler's config as a plain dict (with ``_class_name``)."""
    cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
    out = dict(cfg)
    if "_class_name" not in out and hasattr(scheduler_or_config, "config"):
        out["_class_name"] = type(scheduler_or_config).__name__
    return out


def is_flow(scheduler_or_config) -> bool:
    """A flow-matching scheduler (``FlowMatch*``, ``use_flow_sigmas`` or ``flow_prediction``)."""
    cfg = config_of(scheduler_or_config)
    return (str(cfg.get("_class_name", "")).startswith("FlowMatch") or bool(cfg.get("use_flow_sigmas"))
            or cfg.get("prediction_type") == "flow_prediction")


def _cosine_betas(n: int) -> Tensor:
    """diffusers' ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021), float64."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=_F64)


def alphas_cumprod(scheduler_or_config) -> Tensor:
    """The scheduler's ``alphas_cumprod`` recomputed in float64 from its config
    (``trained_betas``, ``linear``, ``scaled_linear``, ``squaredcos_cap_v2``), rescaled to
    zero terminal SNR when ``rescale_betas_zero_snr`` (Lin et al. 2024, Alg. 1; the last
    entry is then exactly 0)."""
    cfg = config_of(scheduler_or_config)
    n = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        betas = torch.as_tensor(cfg["trained_betas"], dtype=_F64)
    else:
        kind = cfg.get("beta_schedule", "linear")
        if kind == "squaredcos_cap_v2":
            betas = _cosine_betas(n)
        elif kind in ("linear", "scaled_linear"):
            betas = beta_table(kind, n, float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02)))
        else:
            raise ValueError(f"beta_schedule {kind!r} is not supported; pass trained_betas, or one of "
                             f"'linear', 'scaled_linear', 'squaredcos_cap_v2'")
    acp = torch.cumprod(1.0 - betas, 0)
    if cfg.get("rescale_betas_zero_snr"):
        a = acp.sqrt()
        a0, aT = float(a[0]), float(a[-1])
        a = (a - aT) * a0 / (a0 - aT)
        a[-1] = 0.0
        acp = a * a
    return acp


def process_of(scheduler_or_config) -> Process:
    """The diffinfer process of a scheduler (module docstring)."""
    if is_flow(scheduler_or_config):
        return RectifiedFlow()
    return DiscreteVP(alphas_cumprod(scheduler_or_config))


def prediction_of(scheduler_or_config) -> str:
    """The diffinfer prediction type of a scheduler's ``prediction_type``."""
    cfg = config_of(scheduler_or_config)
    if str(cfg.get("_class_name", "")).startswith("FlowMatch"):
        return "velocity"
    kind = cfg.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {kind!r} is not supported; valid: {', '.join(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[kind]


class TimeInput:
    """``t`` -> the network's time: ``t * scale + offset`` (``DiscreteVP``: ``t N - 1``, the
    training-timestep index; flows: ``t N``, or ``t`` for Flux). ``inverse`` maps back."""

    def __init__(self, scale: float, offset: float = 0.0):
        self.scale, self.offset = float(scale), float(offset)

    def __call__(self, t: Tensor) -> Tensor:
        return as_time(t) * self.scale + self.offset

    def inverse(self, label) -> Tensor:
        return (as_time(label) - self.offset) / self.scale

    def __repr__(self) -> str:
        return f"TimeInput(scale={self.scale}, offset={self.offset})"


def time_input_of(scheduler_or_config, model=None) -> TimeInput:
    """The network's time input for a scheduler (and model: Flux transformers take ``t``)."""
    cfg = config_of(scheduler_or_config)
    n = int(cfg.get("num_train_timesteps", 1000))
    if is_flow(cfg):
        return TimeInput(1.0 if model is not None and "Flux" in type(model).__name__ else n)
    return TimeInput(n, -1.0)


def flow_mu(scheduler_or_config, image_seq_len: int) -> float:
    """The resolution-dependent shift ``mu`` of a dynamic-shifting flow scheduler (linear in
    the number of image tokens between ``base_image_seq_len`` and ``max_image_seq_len``, as
    the Flux / SD3 pipelines' ``calculate_shift``)."""
    cfg = config_of(scheduler_or_config)
    base_len, max_len = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    base_shift, max_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    return float(image_seq_len * m + base_shift - m * base_len)


def _scheduler(scheduler_or_config):
    if hasattr(scheduler_or_config, "set_timesteps"):
        return scheduler_or_config
    import diffusers
    cfg = dict(scheduler_or_config)
    return getattr(diffusers, cfg["_class_name"]).from_config(cfg)


def scheduler_grid(scheduler, steps: int, mu: float | None = None, process: Process | None = None) -> Tensor:
    """The scheduler's own ``steps``-step schedule as a diffinfer grid (float64, descending,
    ``steps + 1`` points). The scheduler is copied, not changed. ``mu``: the
    resolution-dependent shift of dynamic-shifting flow schedulers (``flow_mu``)."""
    base = getattr(scheduler, "base_scheduler", None)  # a DiffinferScheduler: its source scheduler
    sched = copy.deepcopy(_scheduler(base if base is not None else scheduler))
    cfg = config_of(sched)
    process = process if process is not None else process_of(cfg)
    kwargs = {}
    if cfg.get("use_dynamic_shifting"):
        if mu is None:
            raise ValueError("this flow scheduler shifts its schedule by resolution: pass mu= "
                             "(diffinfer.integrations.diffusers.flow_mu(scheduler, image_seq_len))")
        kwargs["mu"] = float(mu)
    sched.set_timesteps(int(steps), **kwargs)
    sigmas = getattr(sched, "sigmas", None)
    n_train = int(cfg.get("num_train_timesteps", 1000))
    if is_flow(cfg):
        ts = sigmas.to(_F64).cpu()
    elif sigmas is not None and len(sigmas) == len(sched.timesteps) + 1:
        ratio = sigmas.to(_F64).cpu()  # sigma / alpha, last 0
        ts = process.t_from_logsnr(-2.0 * torch.log(ratio))
        ts[-1] = 0.0 if float(ratio[-1]) == 0.0 else ts[-1]
    else:
        ts = (sched.timesteps.to(_F64).cpu() + 1.0) / n_train
        final = 0.0 if cfg.get("set_alpha_to_one", True) else 1.0 / n_train
        if final < float(ts[-1]):  # else its last step already sits at alphas_cumprod[0]: a no-op step
            ts = torch.cat([ts, torch.tensor([final], dtype=_F64)])
    return validate(ts.clamp(0.0, 1.0))  # float32 tables must not map past t = 1


class DiffusersNet:
    """``net(x, t_in, **cond)`` for a diffusers model: the time goes in as ``timestep=`` and
    the output object (``.sample``) or tuple is unwrapped."""

    def __init__(self, model):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def __call__(self, x: Tensor, t_in, **cond) -> Tensor:
        out = self.model(x, timestep=t_in, return_dict=False, **cond)
        if hasattr(out, "sample"):
            return out.sample
        return out[0] if isinstance(out, (tuple, list)) else out


def cond_keys_of(model) -> tuple[str, ...]:
    """The conditioning keywords a diffusers model's ``forward`` takes (all but the sample,
    the timestep and ``return_dict``)."""
    params = list(inspect.signature(model.forward).parameters.values())
    skip = {"timestep", "timesteps", "return_dict", "self"}
    return tuple(p.name for p in params[1:] if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def from_diffusers(pipe_or_model, scheduler=None, *, cond: dict | None = None, mu: float | None = None,
                   thresholding: bool = True, check: bool = True) -> DenoiserBase:
    """A diffinfer model view of a diffusers pipeline (its ``unet`` or ``transformer`` and its
    ``scheduler``) or of a bare model with the ``scheduler`` it was trained with.

    Returns a ``Denoiser`` (wrapped in ``ClipSample`` / ``DynamicThresholding`` when the
    scheduler config asks for clipping and ``thresholding`` is on) with ``cond_keys`` (what
    ``bind`` accepts) and ``default_ts(steps)``, the scheduler's own grid, which ``sample``
    uses when given no grid. ``mu``: the resolution-dependent flow shift for that grid.
    """
    model = pipe_or_model
    for name in ("unet", "transformer"):
        if getattr(pipe_or_model, name, None) is not None and hasattr(pipe_or_model, "scheduler"):
            model = getattr(pipe_or_model, name)
            scheduler = scheduler if scheduler is not None else pipe_or_model.scheduler
            break
    if scheduler is None:
        raise ValueError("a bare diffusers model needs the scheduler it was trained with, e.g. "
                         "from_diffusers(unet, DDPMScheduler.from_pretrained(path, subfolder='scheduler'))")
    base = getattr(scheduler, "base_scheduler", None)  # a DiffinferScheduler: read its source
    scheduler = base if base is not None else _scheduler(scheduler)
    cfg = config_of(scheduler)
    process = process_of(cfg)
    keys = cond_keys_of(model)
    cond = dict(cond or {})
    unknown = set(cond) - set(keys)
    if unknown:
        raise ValueError(f"{type(model).__name__} takes no {sorted(unknown)}; its conditioning keys: {', '.join(keys)}")
    den = Denoiser(DiffusersNet(model), process, prediction_of(cfg), time_input_of(cfg, model), cond, check,
                   default_ts=lambda steps: scheduler_grid(scheduler, steps, mu=mu, process=process))
    den.cond_keys = keys
    return wrap_thresholding(den, cfg) if thresholding else den


def wrap_thresholding(den: DenoiserBase, scheduler_or_config) -> DenoiserBase:
    """``den`` with the scheduler's ``x0`` clipping (``thresholding`` or ``clip_sample``), if any."""
    from ..thresholding import ClipSample, DynamicThresholding
    cfg = config_of(scheduler_or_config)
    if cfg.get("thresholding"):
        return DynamicThresholding(den, cfg.get("dynamic_thresholding_ratio", 0.995), cfg.get("sample_max_value", 1.0))
    if cfg.get("clip_sample"):
        return ClipSample(den, cfg.get("clip_sample_range", 1.0))
    return den


def __getattr__(name: str):
    if name == "DiffinferScheduler":
        from .diffusers_scheduler import DiffinferScheduler
        return DiffinferScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["from_diffusers", "scheduler_grid", "flow_mu", "DiffinferScheduler", "process_of", "prediction_of",
           "time_input_of", "alphas_cumprod", "config_of", "is_flow", "cond_keys_of", "DiffusersNet", "TimeInput",
           "wrap_thresholding", "PREDICTION_TYPES"]
