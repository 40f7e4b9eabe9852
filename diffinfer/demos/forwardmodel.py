"""``diffinfer structured forwardmodel``: learn a Gaussian prior from measurements only,
``y_i = A_i x_i + noise`` with a random rank-``--rank`` operator per sample, by denoising
through the forward model (``diffinfer.forwardmodel``, Tewari et al. 2023); compare the
learned moments with the truth in Cramer-Rao units and sample the learned prior."""
from __future__ import annotations

import math
import time

import torch

from ..cli.common import float_in, int_in, progress_enabled

HELP = "train a prior from measurements y = A x + noise only, through the forward model"


def add_arguments(parser) -> None:
    parser.add_argument("--dim", type=int_in(2, 8), default=2, help="signal dimension D")
    parser.add_argument("--rank", type=int_in(1, 8), default=1, help="rows M of each operator A_i (<= D)")
    parser.add_argument("--n", type=int_in(100, 100_000), default=4000, help="number of measurements")
    parser.add_argument("--noise", type=float_in(0.0, 10.0), default=0.1, help="measurement noise std")
    parser.add_argument("--steps", type=int_in(1, 100_000), default=400, help="training steps")
    parser.add_argument("--plain", action="store_true",
                        help="Tewari et al.'s unweighted loss (default: likelihood weighting)")


def problem(dim: int, rank: int, n: int, noise: float, seed: int):
    """A seeded random Gaussian prior ``(mu [D], Sigma [D, D])`` and ``n`` measurements with
    Gaussian operators ``A_i [M, D] / sqrt(D)``; returns ``(mu, Sigma, x [n, D], y [n, M], A [n, M, D])``
    (the signals ``x`` only for comparisons: training sees ``y`` and ``A``)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, dtype=torch.float64, generator=g)
    f = 0.6 * torch.randn(dim, dim, dtype=torch.float64, generator=g)
    cov = f @ f.T + 0.1 * torch.eye(dim, dtype=torch.float64)
    x = mu + torch.randn(n, dim, dtype=torch.float64, generator=g) @ torch.linalg.cholesky(cov).T
    A = torch.randn(n, rank, dim, dtype=torch.float64, generator=g) / math.sqrt(dim)
    y = torch.einsum("nmd,nd->nm", A, x) + noise * torch.randn(n, rank, dtype=torch.float64, generator=g)
    return mu, cov, x, y, A


def run(args) -> int:
    from ..cli.common import UsageError
    from ..forwardmodel import cramer_rao, fit_prior
    from ..loop import sample
    from ..process import RectifiedFlow
    from ..toys import GaussianMixture
    from ..train import TrainConfig
    if args.rank > args.dim:
        raise UsageError(f"--rank must be <= --dim ({args.dim}), got {args.rank}")
    t0 = time.perf_counter()
    mu, cov, _, y, A = problem(args.dim, args.rank, args.n, args.noise, args.seed)  # the signals are dropped
    proc = RectifiedFlow()
    cfg = TrainConfig(steps=args.steps, lr=0.05, warmup=min(20, args.steps // 10), ema_decay=0.9,
                      seed=args.seed, checkpoint_every=0)
    prior = fit_prior(y, A, args.noise, proc, cfg, batch=500, likelihood_weighting=not args.plain,
                      progress=progress_enabled(args))
    mean_std, cov_std = cramer_rao(cov, A, args.noise)
    dm, dc = prior.mean() - mu, prior.covariance() - cov
    print(f"{args.n} measurements of rank {args.rank} of a {args.dim}-D Gaussian (noise {args.noise}); "
          f"{'unweighted' if args.plain else 'likelihood-weighted'} loss through the forward model, {args.steps} steps")
    print(f"learned mean: max error {float(dm.abs().max()):.3f} = {float((dm / mean_std).abs().max()):.1f} Cramer-Rao sd; "
          f"covariance: max error {float(dc.abs().max()):.3f} = {float((dc / cov_std).abs().max()):.1f} Cramer-Rao sd")
    learned = prior.as_mixture()
    xs = sample(learned.denoiser(proc), shape=(2000, args.dim), solver="dpmpp-2m", steps=20, seed=args.seed,
                dtype=torch.float64).x
    print(f"2000 samples of the learned prior (dpmpp-2m, 20 steps): mean error {float((xs.mean(0) - mu).norm()):.3f}, "
          f"covariance error {float((torch.cov(xs.T).reshape(args.dim, args.dim) - cov).abs().max()):.3f}")
    if args.out:
        from .. import viz
        viz.scatter_plot(args.out, GaussianMixture(mu[None], cov[None]), proc, xs,
                         "samples of a prior learned from projections only (contours: the true prior)")
        print(f"wrote {args.out}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0
