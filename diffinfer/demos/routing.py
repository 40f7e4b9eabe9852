"""``diffinfer structured routing``: a small DiT on the digits trained with and without
Denoising Task Routing (Park et al. 2023; ``DiT(routing=...)``), same seed and steps;
prints the final training loss, the fixed-draw evaluation loss and the FD of each."""
from __future__ import annotations

from ..cli.common import float_in, int_in, progress_enabled

HELP = "DiT with / without Denoising Task Routing on the digits (loss, FD at equal steps)"


def add_arguments(p) -> None:
    p.add_argument("--steps", type=int_in(1, 100_000), default=200, help="training steps of each model (default 200)")
    p.add_argument("--beta", type=float_in(0.0, 1.0, lo_open=True), default=0.8,
                   help="active channel fraction of the DTR masks (default 0.8)")
    p.add_argument("--alpha", type=float_in(0.0, 100.0, lo_open=True), default=1.0,
                   help="window speed profile o(t) = round(t^alpha (C - C_beta)) (default 1)")
    p.add_argument("--samples", type=int_in(16, 5000), default=256, help="samples for the FD (default 256)")


def run(args) -> int:
    import torch
    from ..zoo import routing_digits as rd
    torch.set_num_threads(1)
    configs = {"plain": None, "DTR": {"beta": args.beta, "alpha": args.alpha}}
    grids = {}
    print(f"small DiT ({rd.DIT_KWARGS['d_model']} channels, depth {rd.DIT_KWARGS['depth']}) on the digits, "
          f"{args.steps} steps each, seed {args.seed}")
    print(f"{'model':8s} {'train loss':>10s} {'eval loss':>10s} {'FD':>8s}")
    for name, routing in configs.items():
        net, losses = rd.train_dit(routing, args.steps, seed=args.seed, progress=progress_enabled(args))
        tail = losses[-min(50, len(losses)):]
        fd, x = rd.sample_fd(net, n=args.samples, seed=args.seed)
        grids[name] = x[:32]
        print(f"{name:8s} {sum(tail) / len(tail):10.4f} {rd.eval_loss(net):10.4f} {fd:8.2f}")
    if args.out:
        from ..viz import save_grid
        save_grid(args.out, torch.cat(list(grids.values())),
                  f"top 4 rows: plain DiT; bottom 4: DTR (beta={args.beta}, alpha={args.alpha}); {args.steps} steps")
        print(f"wrote {args.out}")
    return 0
