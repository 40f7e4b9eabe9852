"""Every picture the package draws or reads (matplotlib, imported when first used); every
file is written atomically (``diffinfer.atomic``: a temporary file, fsync, rename).

- ``digit_grid`` / ``save_image`` / ``image_bytes``: digits ``[N, 1, 8, 8]`` tiled into one
  grey image and written (or encoded) as a PNG (dark ink on light paper);
- ``read_gray_image``: a PNG as a grey ``[H, W]`` image in ``[0, 1]`` (``zoo.tasks.read_digit_png``);
- ``save_grid``: images ``[B, 1, H, W]`` as a titled grid of panels;
- ``scatter_plot``: 2-D samples over the contours of a toy's density;
- ``series_plot``: sunspot windows;
- ``forecast_plot``: a sunspot forecast's bands against the truth and the seasonal-naive forecast.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _format(path) -> str:
    """The image format a path names by its suffix (default ``png``)."""
    import pathlib
    suffix = pathlib.Path(path).suffix.lower().lstrip(".")
    return suffix or "png"


def _savefig(fig, path: str) -> None:
    """``fig.savefig`` written atomically (``diffinfer.atomic``)."""
    from .atomic import atomic_path
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format=_format(path))
    finally:
        _pyplot().close(fig)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# --- digits -------------------------------------------------------------------------------
def digit_grid(x: Tensor, nrow: int, pad: int = 1) -> Tensor:
    """Tile digits ``[N, 1, 8, 8]`` in ``[-1, 1]`` into one ``[H, W]`` image in ``[0, 1]``."""
    from .zoo.data import digits_to_unit
    n = x.shape[0]
    ncol = (n + nrow - 1) // nrow
    h, w = x.shape[-2:]
    grid = torch.zeros(ncol * (h + pad) + pad, nrow * (w + pad) + pad)  # white gaps (ink is 1)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = \
            digits_to_unit(x[i, 0].float())
    return grid


def image_bytes(image: Tensor, scale: int = 4, format: str = "png") -> bytes:
    """A grey image ``[H, W]`` in ``[0, 1]`` (1 is ink) encoded (PNG by default), each pixel
    ``scale`` x ``scale``: what ``save_image`` writes (the web demo sends it)."""
    import io
    plt = _pyplot()
    big = image.detach().cpu().float().repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    buf = io.BytesIO()
    plt.imsave(buf, big.numpy(), cmap="gray_r", vmin=0.0, vmax=1.0, format=format)
    return buf.getvalue()


def save_image(path: str, image: Tensor, scale: int = 4) -> None:
    """A grey image ``[H, W]`` in ``[0, 1]`` (1 is ink) as a PNG, each pixel ``scale`` x ``scale``."""
    from .atomic import write_bytes
    write_bytes(path, image_bytes(image, scale, _format(path)))


def read_gray_image(path: str) -> Tensor:
    """The image at ``path`` as luminance ``[H, W]`` (float64) in ``[0, 1]``."""
    import matplotlib.image

    img = torch.as_tensor(matplotlib.image.imread(path), dtype=torch.float64)
    if img.dim() == 3:  # RGB(A) -> luminance
        img = (img[..., :3] * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)).sum(-1)
    if img.max() > 1.0:
        img = img / 255.0
    return img


def save_grid(path: str, x: Tensor, title: str) -> None:
    """Images ``[B, 1, H, W]`` as a grid PNG."""
    plt = _pyplot()
    n = x.shape[0]
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(x[k, 0].float().numpy(), cmap="gray")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)


# --- toys ---------------------------------------------------------------------------------
def scatter_plot(path: str, toy, process, samples: Tensor, title: str) -> None:
    """Samples over the contours of the true density (2-D toys; first two coordinates otherwise)."""
    plt = _pyplot()
    s = samples.reshape(samples.shape[0], -1)[:, :2].double()
    fig, ax = plt.subplots(figsize=(5, 5))
    if toy.dim == 2:
        lo, hi = float(s.min()) - 0.5, float(s.max()) + 0.5
        g = torch.linspace(lo, hi, 200, dtype=torch.float64)
        xx, yy = torch.meshgrid(g, g, indexing="xy")
        logp = toy.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).reshape(200, 200)
        ax.contour(xx.numpy(), yy.numpy(), logp.exp().numpy(), levels=8, cmap="Greys")
    ax.scatter(s[:, 0].numpy(), s[:, 1].numpy(), s=2, alpha=0.5, color="tab:blue")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    fig.tight_layout()
    _savefig(fig, path)


# --- sunspots -----------------------------------------------------------------------------
def series_plot(path: str, x: Tensor) -> None:
    """Sunspot windows ``[N, 1, W]`` on the model's scale (the first 8) as line plots."""
    from .zoo.data import sunspots_from_unit
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    for row in sunspots_from_unit(x[:8, 0]):
        ax.plot(row.numpy(), lw=1)
    ax.set_xlabel("year in window")
    ax.set_ylabel("sunspot number")
    fig.tight_layout()
    _savefig(fig, path)


def forecast_plot(path: str, series: Tensor, truth: Tensor, fc: Tensor, naive: Tensor, title: str) -> None:
    """History, truth, the seasonal-naive forecast and the 10-90% / 25-75% forecast bands."""
    from .zoo.data import sunspots_from_unit
    plt = _pyplot()

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
    _savefig(fig, path)


def graph_grid(path: str, adjacency: Tensor, title: str, ncol: int = 4) -> None:
    """0/1 adjacencies ``[B, n, n]`` drawn as node-link panels (networkx spring layout, seeded)."""
    import networkx as nx
    from .graph_stats import to_networkx
    plt = _pyplot()
    graphs = to_networkx(adjacency)
    nrow = (len(graphs) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.2 * ncol, 2.2 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, g in zip(axes.flat, graphs):
        nx.draw_networkx(g, pos=nx.spring_layout(g, seed=0), ax=ax, node_size=40, with_labels=False, width=0.8)
    fig.suptitle(title)
    _savefig(fig, path)
