"""``diffinfer restore`` (inverse problems on digits) and ``diffinfer forecast`` (TSDiff on sunspots)."""
from __future__ import annotations

import argparse

import torch

from . import inverse

DIGIT_TASKS = ("inpaint", "superres", "deblur", "mri")
SUNSPOT_PERIOD = 11  # years: the solar cycle, for the seasonal-naive baseline
#: self-guidance of a trained eps-network: off at the highest noise levels (where x0_hat's
#: errors grow like 1 / alpha) and read on x0_hat clamped to the data range
GUIDANCE_T_MAX = 0.6
DATA_RANGE = (-1.0, 1.0)


# --- images in and out ------------------------------------------------------------------
def read_digit_png(path: str) -> torch.Tensor:
    """A digit image ``[1, 1, 8, 8]`` in ``[-1, 1]`` from a PNG of 8x8 pixels or any integer
    multiple (block-averaged), dark ink on light paper (as ``save_image`` writes them)."""
    import matplotlib.image

    img = torch.as_tensor(matplotlib.image.imread(path), dtype=torch.float64)
    if img.dim() == 3:  # RGB(A) -> luminance
        img = (img[..., :3] * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)).sum(-1)
    if img.max() > 1.0:
        img = img / 255.0
    h, w = img.shape
    if h != w or h % 8:
        raise ValueError(f"{path}: need a square image of 8x8 pixels or a multiple, got {h}x{w}")
    f = h // 8
    ink = 1.0 - img.reshape(8, f, 8, f).mean((1, 3))  # [8, 8] in [0, 1]
    return (2.0 * ink - 1.0).reshape(1, 1, 8, 8).float()


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per row (dB) for images in ``[-1, 1]``."""
    mse = ((x - ref) ** 2).reshape(x.shape[0], -1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))


def measurement_view(op: inverse.LinearOperator, y: torch.Tensor) -> torch.Tensor:
    """What to show for a measurement: ``A^+ y`` in image space."""
    return op.pinv(y) if not isinstance(op, inverse.GaussianBlur) else y


#: Gaussian DPS scale per task (tuned on the bundled digits model at noise 0.05: the
#: gradient grows with the number of measurements, and past these values DPS diverges)
DPS_SCALES = {"inpaint": 0.03, "superres": 0.1, "deblur": 0.1, "mri": 0.03}


def restore_digits(model: str, task: str, method: str, x: torch.Tensor, noise_std: float, steps: int | None,
                   seed: int, scale: float | None = None,
                   **options) -> tuple[torch.Tensor, torch.Tensor, inverse.LinearOperator, int]:
    """Restore digits ``x`` ``[B, 1, 8, 8]``: measure with the task's operator, then run the
    method on the unconditional model. Returns ``(restored, y, op, nfe)``.

    Defaults: DPS at ``DPS_SCALES[task]`` (unless ``scale``), guided for ``t < 0.6`` on
    ``x0_hat`` clamped to ``[-1, 1]``; RED-Diff on deblurring starts from zeros with
    ``lr = 0.03`` (``A^+ y`` of a blur amplifies the noise)."""
    from . import zoo
    den = zoo.load(model)  # no label bound: the network uses its null class (unconditional)
    op = inverse.task_operator(task, den.shape, noise_std)
    y = op.measure(x, seed=seed + 1)
    if method == "dps":
        options = {"interval": (0.0, GUIDANCE_T_MAX), "clip": DATA_RANGE, **options}
    if method == "reddiff" and task == "deblur":
        options = {"init": torch.zeros_like(x), "lr": 0.03, **options}
    scale = DPS_SCALES[task] if scale is None else scale
    out, nfe = inverse.restore(den, op, y, den.shape, method, steps=steps, seed=seed, scale=scale, **options)
    return out.clamp(-1.0, 1.0), y, op, nfe


def cmd_restore(args) -> int:
    from .cli_core import parse_options
    from .cli_models import digit_grid, save_image
    if args.input:
        x = read_digit_png(args.input)
    else:
        from .data import digits
        x = digits()[0][args.index:args.index + 1]
    x = x.expand(args.n, -1, -1, -1).contiguous()
    out, y, op, nfe = restore_digits(args.model, args.task, args.method, x, args.noise, args.steps, args.seed,
                                     args.scale, **parse_options(args.option))
    scores = psnr(out, x)
    print(f"model={args.model} task={args.task} method={args.method} noise_std={args.noise} n={args.n}")
    print(f"NFE={nfe}  PSNR={float(scores.mean()):.2f} dB (per sample: "
          f"{', '.join(f'{float(v):.1f}' for v in scores[:8])}{' ...' if args.n > 8 else ''})")
    if args.out:
        view = measurement_view(op, y[:1]).clamp(-1, 1)
        save_image(args.out, digit_grid(torch.cat([x[:1], view, out]).float(), nrow=args.n + 2))
        print(f"wrote {args.out} (input | measurement | {args.n} restorations)")
    return 0


# --- forecasting ------------------------------------------------------------------------
def sunspot_split(horizon: int, window: int = 32, end: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forecast samples ``[n, horizon]`` (model scale), with the series, history and truth
    (``sunspot_split``). ``model`` is a bundled model's name or a loaded denoiser."""
    from . import zoo
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


def forecast_scores(fc: torch.Tensor, series: torch.Tensor, truth: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """``(CRPS of the samples fc [n, horizon], MAE of the seasonal-naive forecast, that
    forecast [horizon])`` in sunspot numbers; a point forecast's CRPS is its MAE."""
    from .data import sunspots_from_unit
    horizon = truth.numel()
    naive = inverse.seasonal_naive(series[:-horizon], horizon, SUNSPOT_PERIOD)
    crps = inverse.crps_samples(sunspots_from_unit(fc.double()), sunspots_from_unit(truth.double()))
    return crps, float((sunspots_from_unit(naive) - sunspots_from_unit(truth)).abs().mean()), naive


def forecast_plot(path: str, series: torch.Tensor, truth: torch.Tensor, fc: torch.Tensor, naive: torch.Tensor,
                  title: str) -> None:
    """History, truth, the seasonal-naive forecast and the 10-90% / 25-75% forecast bands."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .data import sunspots_from_unit

    horizon = truth.numel()
    years = torch.arange(1700, 1700 + series.numel())
    shown = slice(max(0, series.numel() - horizon - 60), series.numel() - horizon)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(years[shown], sunspots_from_unit(series[shown]), color="black", lw=1.2, label="history")
    fy = years[-horizon:]
    q = torch.quantile(sunspots_from_unit(fc.double()), torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64), dim=0)
    ax.fill_between(fy, q[0], q[4], color="tab:blue", alpha=0.2, label="forecast 10-90%")
    ax.fill_between(fy, q[1], q[3], color="tab:blue", alpha=0.35, label="forecast 25-75%")
    ax.plot(fy, q[2], color="tab:blue", lw=1.5, label="forecast median")
    ax.plot(fy, sunspots_from_unit(truth), color="tab:red", lw=1.2, label="truth")
    ax.plot(fy, sunspots_from_unit(naive), color="tab:gray", ls="--", lw=1, label="seasonal naive (11 y)")
    ax.set_xlabel("year")
    ax.set_ylabel("sunspot number")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_forecast(args) -> int:
    if args.method not in ("tsdiff", "tsdiff-refine"):
        raise ValueError(f"unknown method {args.method!r}; valid: tsdiff, tsdiff-refine")
    fc, series, hist, truth = forecast_sunspots(args.model, args.horizon, args.method, args.n, args.scale,
                                                args.loss, args.steps, args.seed, args.t_max)
    crps, crps_naive, naive = forecast_scores(fc, series, truth)
    print(f"model={args.model} method={args.method} horizon={args.horizon} n={args.n} loss={args.loss} scale={args.scale}")
    print(f"CRPS={crps:.2f} sunspots (seasonal naive, point forecast: {crps_naive:.2f})")
    if args.out:
        forecast_plot(args.out, series, truth, fc, naive,
                      f"{args.model} | {args.method} | CRPS {crps:.1f} (seasonal naive {crps_naive:.1f})")
        print(f"wrote {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore a digit (inpaint, super-resolve, deblur) with a diffusion prior")
    p.add_argument("--model", default="digits", help="a bundled digits model (digits, digits-flow)")
    p.add_argument("--task", default="inpaint", choices=DIGIT_TASKS)
    p.add_argument("--method", default="dps", choices=inverse.METHODS)
    p.add_argument("--input", default=None, help="PNG of a digit (8x8 or a multiple); default: a real digit")
    p.add_argument("--index", type=int, default=0, help="which real digit when no --input is given")
    p.add_argument("--noise", type=float, default=0.05, help="measurement noise std (images in [-1, 1])")
    p.add_argument("--n", type=int, default=4, help="posterior samples to draw")
    p.add_argument("--steps", type=int, default=None, help="solver steps / RED-Diff iterations")
    p.add_argument("--scale", type=float, default=None,
                   help="DPS likelihood-gradient scale (Gaussian DPS, guided for t < 0.6 on x0_hat clamped to "
                        f"[-1, 1]); default per task: {DPS_SCALES}")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (e.g. resample=4, jump=5, lam=0.25, lr=0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output PNG")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("forecast", help="probabilistic forecast of the sunspot series (TSDiff self-guidance)")
    p.add_argument("--model", default="sunspots")
    p.add_argument("--horizon", type=int, default=24)
    p.add_argument("--method", default="tsdiff", help="tsdiff or tsdiff-refine")
    p.add_argument("--n", type=int, default=64, help="forecast samples")
    p.add_argument("--scale", type=float, default=4.0, help="self-guidance scale")
    p.add_argument("--t-max", type=float, default=GUIDANCE_T_MAX, help="guide only for t below this")
    p.add_argument("--loss", default="mse", choices=inverse.OBS_LOSSES)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output PNG")
    p.set_defaults(func=cmd_forecast)
