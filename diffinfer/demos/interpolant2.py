"""``diffinfer structured interpolant2``: a two-sided stochastic interpolant (Albergo, Boffi &
Vanden-Eijnden 2023) carries samples of a non-Gaussian base (an 8-mode ring) to a random
Gaussian mixture with the exact drift, by the probability-flow ODE and by the SDE; prints
each endpoint's distances to the target beside the two-exact-sets floor."""
from __future__ import annotations

import torch

from ..stochastic_interpolant import PATHS, MixtureInterpolant, TwoSidedInterpolant, transport
from ..cli.common import float_in, int_in

HELP = "two-sided stochastic interpolant: ring -> random mixture by ODE and SDE (exact drift)"
METRICS = ("sw", "mass", "mean", "cov")


def add_arguments(p) -> None:
    p.add_argument("--n", type=int_in(1, 100_000), default=2000, help="samples (default 2000)")
    p.add_argument("--steps", type=int_in(1, 10_000), default=100, help="ODE / SDE steps (default 100)")
    p.add_argument("--eps", type=float_in(0.0, 100.0, lo_open=True), default=0.5,
                   help="SDE diffusion eps > 0 (default 0.5)")
    p.add_argument("--a", type=float_in(0.0, 100.0), default=1.0, help="latent noise gamma^2 = a t (1 - t) (default 1)")
    p.add_argument("--path", choices=PATHS.names(), default="linear", help="interpolant path (default linear)")


def run(args) -> int:
    from ..toys import ring2d
    from ..toys.random_problem import floors, random_problem, score
    rho0 = ring2d(8, radius=2.0, std=0.15)
    rho1 = random_problem(int(args.seed), dim=2).prior
    oracle = MixtureInterpolant(rho0, rho1, TwoSidedInterpolant(args.path, a=args.a))
    x = rho0.sample(args.n, seed=int(args.seed) + 1)
    ode = transport(oracle, x, steps=args.steps)
    sde = transport(oracle, x, steps=args.steps, eps=args.eps, seed=int(args.seed))
    floor = floors(rho1, args.n)
    print(f"ring (8 modes) -> random mixture (seed {args.seed}, {rho1.n_components} components), "
          f"{args.path} path, a={args.a}, n={args.n}, {args.steps} steps")
    print("floor (two exact sets): " + "  ".join(f"{m}={floor[m]:.4f}" for m in METRICS))
    for name, out in (("ODE (Heun)", ode), (f"SDE (EM, eps={args.eps})", sde)):
        s = score(out, rho1, seed=7)
        print(f"{name}: " + "  ".join(f"{m}={s[m]:.4f} ({s[m] / floor[m]:.2f}x floor)" for m in METRICS))
    if args.out:
        _plot(args.out, rho1, x, ode, sde)
        print(f"wrote {args.out}")
    return 0


def _plot(path, rho1, x, ode, sde) -> None:
    from ..viz import _pyplot, _savefig
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    lo = float(torch.cat([x, ode, sde]).min()) - 0.5
    hi = float(torch.cat([x, ode, sde]).max()) + 0.5
    g = torch.linspace(lo, hi, 150, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    dens = rho1.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp().reshape(150, 150)
    for ax, pts, title in zip(axes, (x, ode, sde), ("base rho0 (ring)", "ODE endpoint", "SDE endpoint")):
        ax.contour(xx.numpy(), yy.numpy(), dens.numpy(), levels=8, cmap="Greys")
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=2, alpha=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
    fig.tight_layout()
    _savefig(fig, path)
