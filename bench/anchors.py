"""The anchors: diffusers' and k-diffusion's samplers driven by a diffinfer model.

Each anchor runs the other library's own update code on the same model, the same time
grid and the same starting noise as diffinfer's solvers, by feeding it our model's
predictions:

- diffusers schedulers (``DDIMScheduler``, ``EulerDiscreteScheduler``,
  ``DPMSolverMultistepScheduler`` 2M / 3M ``dpmsolver++``, ``UniPCMultistepScheduler`` bh2,
  ``FlowMatchEulerDiscreteScheduler``): ``set_timesteps`` sizes their state, then their
  ``sigmas`` are replaced by our grid (``sigma/alpha`` for variance-preserving processes,
  ``t`` for rectified flow with ``use_flow_sigmas``) and their ``timesteps`` by distinct
  labels, so every ``step()`` reads our noise levels. ``DDIMScheduler`` indexes an
  ``alphas_cumprod`` table by integer timestep: it gets a table of the grid's
  ``alpha(t)^2`` (one entry per point, ``final_alpha_cumprod = 1`` for ``t = 0``).
  The model output given is the data prediction (``prediction_type='sample'``), or the
  velocity for flows (``'flow_prediction'``).
- k-diffusion's ``sample_euler``, ``sample_heun``, ``sample_dpmpp_2m`` (Karras et al. 2022;
  Lu et al. 2022) in its variables ``x/alpha`` and ``sigma/alpha``. k-diffusion is
  optional (``pip install --no-deps k-diffusion``), loaded and bridged by
  ``diffinfer.integrations.k_diffusion`` (``load_k_diffusion``, ``as_k_diffusion``).
  Without k-diffusion those anchors are skipped.

Variance-preserving processes (``alpha^2 + sigma^2 = 1``: ``VP``, ``DiscreteVP``) and
``RectifiedFlow`` are supported; k-diffusion's variables are infinite at ``alpha = 0``,
so it is skipped on flows whose grid starts at ``t = 1``.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch

from diffinfer.denoiser import DenoiserBase
from diffinfer.integrations.k_diffusion import as_k_diffusion, k_diffusion_status, k_sigmas, load_k_diffusion
from diffinfer.process import RectifiedFlow, as_time, expand_to

Tensor = torch.Tensor
_F64 = torch.float64


# --- the process as the other libraries see it ---------------------------------------------
def process_kind(process) -> str:
    """``'vp'`` (``alpha^2 + sigma^2 = 1``), ``'flow'`` (rectified flow), ``'ve'``
    (``alpha = 1``: EDM, VE) or ``'other'``."""
    if isinstance(process, RectifiedFlow):
        return "flow"
    t = torch.linspace(0.05, 0.95, 7, dtype=_F64)
    one = process.alpha(t) ** 2 + process.sigma(t) ** 2
    if torch.allclose(one, torch.ones_like(one), atol=1e-10):
        return "vp"
    if torch.allclose(process.alpha(t), torch.ones_like(t), atol=1e-12):
        return "ve"
    return "other"


class VPView(DenoiserBase):
    """An ``alpha = 1`` model (EDM, VE) seen as the variance-preserving one with the same
    log-SNR: ``x_vp = x / sqrt(1 + sigma^2)``, whose data and noise predictions are the
    same (what diffusers' Karras-sigma schedulers do with an EDM model). The grids' times
    are unchanged and ``alpha(0) = 1`` in both, so an endpoint at ``t = 0`` is the same
    sample. Shares the model's NFE counter."""

    def __init__(self, den: DenoiserBase):
        from diffinfer.process import Interpolant
        self.den, self._counter = den, den._counter
        p = den.process
        a = lambda t: 1.0 / torch.sqrt(1.0 + p.sigma(t) ** 2)  # noqa: E731
        s = lambda t: p.sigma(t) * a(t)  # noqa: E731
        da = lambda t: -p.sigma(t) * p.d_sigma(t) * a(t) ** 3  # noqa: E731
        ds = lambda t: p.d_sigma(t) * a(t) ** 3  # noqa: E731
        self.process = Interpolant(a, s, da, ds, t_min=p.t_min, t_max=p.t_max)
        self.process.t_from_logsnr = p.t_from_logsnr

    def predict(self, x: Tensor, t):
        t = as_time(t)
        return self.den.predict(x / expand_to(self.process.alpha(t), x), t)


def vp_view(den, x_T: Tensor, ts: Tensor):
    """``(den, x_T)`` as the anchors run them: an ``alpha = 1`` model through ``VPView`` with
    its starting noise scaled to the view; others unchanged."""
    if process_kind(den.process) != "ve":
        return den, x_T
    view = VPView(den)
    return view, x_T * float(view.process.alpha(ts[0]))


sigma_ratio = k_sigmas  # sigma(t)/alpha(t) on the grid (diffinfer.integrations.k_diffusion)


# --- diffusers ---------------------------------------------------------------------------
def _labels(n: int) -> Tensor:
    """Distinct descending timestep labels for ``n`` steps (only looked up, never used as
    time; floats, as the Euler schedulers refuse integer labels)."""
    return torch.arange(n, 0, -1, dtype=torch.float32) * 10.0


def _install_grid(sched, process, ts: Tensor, dtype) -> None:
    """Replace a multistep / Euler scheduler's noise levels by our grid (see module doc)."""
    n = ts.numel() - 1
    sched.set_timesteps(n)  # sizes and resets the scheduler's own state
    levels = ts if process_kind(process) == "flow" else sigma_ratio(process, ts)
    sched.sigmas = levels.to(dtype)
    sched.timesteps = _labels(n)
    sched.num_inference_steps = n
    sched._step_index, sched._begin_index = None, None


def _ddim_scheduler(process, ts: Tensor, dtype):
    """``DDIMScheduler`` whose training table is the grid: index ``k`` holds ``alpha^2`` at
    ``ts[n - 1 - k]``; ``t = 0`` is its ``final_alpha_cumprod = 1``."""
    from diffusers import DDIMScheduler
    n = ts.numel() - 1
    if float(ts[-1]) != 0.0:
        raise ValueError("the diffusers DDIM anchor needs a grid ending at t = 0")
    sched = DDIMScheduler(num_train_timesteps=n, clip_sample=False, set_alpha_to_one=True,
                          prediction_type="sample", timestep_spacing="leading", steps_offset=0)
    sched.alphas_cumprod = (process.alpha(ts[:-1]) ** 2).flip(0).to(dtype)
    sched.set_timesteps(n)
    if sched.timesteps.tolist() != list(range(n - 1, -1, -1)):
        raise RuntimeError(f"unexpected DDIM timesteps {sched.timesteps.tolist()}")
    return sched


@dataclass
class Anchor:
    """One anchor sampler: ``run(den, x_T, ts) -> x_0``; ``equivalent`` names the diffinfer
    solver (and options) that implements the same algorithm; ``nfe(steps)`` its model calls."""

    name: str
    library: str
    algorithm: str
    run: Callable
    kinds: tuple = ("vp",)
    equivalent: tuple = ("", {})
    evals_per_step: int = 1
    needs: str = "diffusers"

    def nfe(self, steps: int) -> int:
        return nfe_of(steps, self.evals_per_step)

    def steps_for(self, nfe: int) -> int:
        """The most steps whose NFE fits ``nfe``."""
        return steps_for(nfe, self.evals_per_step)


def steps_for(nfe: int, evals_per_step: int) -> int:
    """The most steps whose model calls fit ``nfe`` (Heun's last step is one call)."""
    return max(1, (nfe + evals_per_step - 1) // evals_per_step)


def nfe_of(steps: int, evals_per_step: int) -> int:
    """Model calls of ``steps`` steps (Heun: the last step is Euler, one call)."""
    return steps * evals_per_step - (evals_per_step - 1)


def _diffusers_loop(make_scheduler, output: str):
    """A runner: our model's ``output`` ('x0' or 'velocity'; always the velocity for flows)
    fed to the scheduler's ``step``."""

    def run(den, x_T: Tensor, ts: Tensor) -> Tensor:
        process = den.process
        flow = process_kind(process) == "flow"
        sched = make_scheduler(process, ts, x_T.dtype, flow)
        n = ts.numel() - 1
        x = x_T
        euler_like = hasattr(sched, "scale_model_input") and getattr(sched, "_ve_space", False)
        a0 = float(process.alpha(ts[0]))
        if euler_like:
            x = x / a0  # EulerDiscrete integrates x / alpha
        for i in range(n):
            t = ts[i]
            if euler_like:
                x_model = sched.scale_model_input(x, sched.timesteps[i])  # x_t = x / sqrt(1 + s^2)
            else:
                x_model = x
            pred = den.predict(x_model, t)
            if output == "velocity" or flow:  # flow schedulers take the velocity
                c = (expand_to(process.d_alpha(t), x), expand_to(process.d_sigma(t), x))
                model_out = c[0] * pred.x0 + c[1] * pred.eps
            else:
                model_out = pred.x0
            x = sched.step(model_out, sched.timesteps[i], x, return_dict=False)[0]
        if euler_like:
            x = x * float(process.alpha(ts[-1]))
        return x

    run.make_scheduler = make_scheduler  # the configured scheduler (the overhead benchmark times its step)
    return run


def _make_multistep(cls_name: str, **config):
    def make(process, ts, dtype, flow):
        import diffusers
        cls = getattr(diffusers, cls_name)
        opts = dict(config)
        if flow:
            opts.update(use_flow_sigmas=True, prediction_type="flow_prediction")
        else:
            opts.update(prediction_type="sample")
        sched = cls(**opts)
        _install_grid(sched, process, ts, dtype)
        return sched
    return make


def _make_euler(process, ts, dtype, flow):
    from diffusers import EulerDiscreteScheduler
    sched = EulerDiscreteScheduler(prediction_type="sample")
    _install_grid(sched, process, ts, dtype)
    sched._ve_space = True
    return sched


def _make_flow_euler(process, ts, dtype, flow):
    from diffusers import FlowMatchEulerDiscreteScheduler
    sched = FlowMatchEulerDiscreteScheduler()
    _install_grid(sched, process, ts, dtype)
    return sched


def _make_ddim(process, ts, dtype, flow):
    return _ddim_scheduler(process, ts, dtype)


# --- k-diffusion (the package's bridge: diffinfer.integrations.k_diffusion) ------------------
def _k_diffusion_runner(sampler_name: str):
    def run(den, x_T: Tensor, ts: Tensor) -> Tensor:
        ks, reason = load_k_diffusion()
        if ks is None:
            raise RuntimeError(reason)
        process = den.process
        sig = sigma_ratio(process, ts)  # [n + 1], last 0
        if not bool(torch.isfinite(sig).all()):
            raise ValueError("k-diffusion's sigma/alpha is infinite on this grid (alpha = 0)")
        model = as_k_diffusion(den, ts)  # evaluated exactly at the grid's times
        x = x_T / float(process.alpha(ts[0]))
        with torch.no_grad():
            out = getattr(ks, sampler_name)(model, x, sig.to(x_T.dtype), disable=True)
        return out * float(process.alpha(ts[-1]))

    return run


# --- the table ---------------------------------------------------------------------------
ANCHORS: dict[str, Anchor] = {a.name: a for a in [
    Anchor("diffusers-ddim", "diffusers", "DDIMScheduler (eta=0)",
           _diffusers_loop(_make_ddim, "x0"), ("vp",), ("ddim", {})),
    Anchor("diffusers-euler", "diffusers", "EulerDiscreteScheduler",
           _diffusers_loop(_make_euler, "x0"), ("vp",), ("euler", {})),
    Anchor("diffusers-dpmpp-2m", "diffusers", "DPMSolverMultistepScheduler order 2 dpmsolver++ midpoint",
           _diffusers_loop(_make_multistep("DPMSolverMultistepScheduler", solver_order=2,
                                           algorithm_type="dpmsolver++"), "x0"),
           ("vp", "flow"), ("dpmpp-2m", {})),
    Anchor("diffusers-dpmpp-3m", "diffusers", "DPMSolverMultistepScheduler order 3 dpmsolver++",
           _diffusers_loop(_make_multistep("DPMSolverMultistepScheduler", solver_order=3,
                                           algorithm_type="dpmsolver++"), "x0"),
           ("vp", "flow"), ("dpmpp-3m", {"third_order": "diffusers"})),
    Anchor("diffusers-unipc", "diffusers", "UniPCMultistepScheduler order 2 bh2",
           _diffusers_loop(_make_multistep("UniPCMultistepScheduler", solver_order=2, solver_type="bh2"), "x0"),
           ("vp", "flow"), ("unipc", {})),
    Anchor("diffusers-flow-euler", "diffusers", "FlowMatchEulerDiscreteScheduler",
           _diffusers_loop(_make_flow_euler, "velocity"), ("flow",), ("euler", {})),
    Anchor("kdiff-euler", "k-diffusion", "sample_euler", _k_diffusion_runner("sample_euler"),
           ("vp",), ("euler", {}), needs="k-diffusion"),
    Anchor("kdiff-heun", "k-diffusion", "sample_heun", _k_diffusion_runner("sample_heun"),
           ("vp",), ("heun", {"variable": "sigma"}), evals_per_step=2, needs="k-diffusion"),
    Anchor("kdiff-dpmpp-2m", "k-diffusion", "sample_dpmpp_2m", _k_diffusion_runner("sample_dpmpp_2m"),
           ("vp",), ("dpmpp-2m", {"lower_order_final": False}), needs="k-diffusion"),
]}


def unavailable_reason(name: str, process=None) -> str | None:
    """Why anchor ``name`` cannot run (on ``process``), or ``None`` if it can."""
    if name not in ANCHORS:
        raise ValueError(f"unknown anchor {name!r}; valid: {', '.join(sorted(ANCHORS))}")
    anchor = ANCHORS[name]
    if anchor.needs == "diffusers" and importlib.util.find_spec("diffusers") is None:
        return "diffusers is not installed"
    if anchor.needs == "k-diffusion":
        module, reason = load_k_diffusion()
        if module is None:
            return reason
    kind = None if process is None else process_kind(process)
    if kind == "ve" and "vp" in anchor.kinds:  # run on the variance-preserving view (VPView)
        kind = "vp"
    if process is not None and kind not in anchor.kinds:
        return f"{anchor.algorithm} is run here only for {', '.join(anchor.kinds)} processes"
    return None


def available(process=None) -> list[str]:
    """Anchor names that can run (on ``process``)."""
    return [n for n in ANCHORS if unavailable_reason(n, process) is None]


def run(name: str, den, x_T: Tensor, ts: Tensor) -> Tensor:
    """The anchor's endpoint from ``x_T`` on grid ``ts`` with model ``den`` (no gradient)."""
    reason = unavailable_reason(name, den.process)
    if reason is not None:
        raise RuntimeError(f"anchor {name!r} cannot run: {reason}")
    den, x_T = vp_view(den, x_T, ts)
    with torch.no_grad():
        return ANCHORS[name].run(den, x_T, ts)


__all__ = ["Anchor", "ANCHORS", "available", "run", "unavailable_reason", "load_k_diffusion", "k_diffusion_status",
           "process_kind", "sigma_ratio", "VPView", "vp_view"]
