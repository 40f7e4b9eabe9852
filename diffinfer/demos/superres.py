"""``diffinfer structured superres``: digits 2x super-resolution (4x4 -> 8x8) by a tiny
conditional diffusion model trained with ordinary noise and with SAM-DiffSR's region-modulated
noise (Wang et al. 2024; regions from thresholded intensity of the low-resolution input, not
SAM), sampled with the matching correction and, for the modulated model, also uncorrected as in
the paper; prints PSNR to the truth and the digits classifier's accuracy on the held-out split."""
from __future__ import annotations

from ..cli.common import float_in, int_in, progress_enabled

HELP = "digits 2x super-resolution with / without region-modulated training noise (PSNR, accuracy)"


def add_arguments(p) -> None:
    p.add_argument("--steps", type=int_in(1, 100_000), default=200, help="training steps of each model (default 200)")
    p.add_argument("--scale", type=float_in(0.0, 10.0, lo_open=True), default=0.5,
                   help="region shifts scale * (-1, 0, 1) for background / edge / stroke (default 0.5)")
    p.add_argument("--n", type=int_in(1, 180), default=180,
                   help="held-out digits to super-resolve (default: all 180)")
    p.add_argument("--sample-steps", type=int_in(2, 1000), default=30, help="DDPM sampling steps (default 30)")


def run(args) -> int:
    import torch
    from ..zoo import superres_digits as sr
    torch.set_num_threads(1)
    print(f"digits 4x4 -> 8x8, {args.steps} training steps per model (batch 64), region shift scale "
          f"{args.scale}, DDPM {args.sample_steps} steps; {args.n} held-out digits")
    print(f"{'method':28s} {'PSNR dB':>8s} {'accuracy':>9s}")
    for name, r in sr.baselines(args.n).items():
        print(f"{name + ' (no model)':28s} {r['psnr']:8.2f} {r['accuracy']:9.3f}")
    outputs: dict = {}
    rows = sr.compare(args.steps, scale=args.scale, seeds=(args.seed,), sample_steps=args.sample_steps, batch=64,
                      n=args.n, progress=progress_enabled(args), outputs=outputs)
    for r in rows:
        print(f"{r['name']:28s} {r['psnr']:8.2f} {r['accuracy']:9.3f}")
    if args.out:
        from ..viz import save_grid
        hr = sr.split()[1][:args.n]
        lr_up = sr.upsample(sr.degrade(hr))
        pics = [lr_up[:8], outputs["plain noise"][:8], outputs["region noise, corrected"][:8], hr[:8]]
        save_grid(args.out, torch.cat(pics), "rows: low-res input, plain noise, region noise (corrected), truth")
        print(f"wrote {args.out}")
    return 0
