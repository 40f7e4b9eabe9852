"""bench/accel.py's pieces: the step search, the diffusers table of the model's process, and
the diffusers loop against diffinfer's solver of the same algorithm on the same grid."""
import pathlib
import sys

import pytest
import torch

import diffinfer as di
from diffinfer.toys import ring2d

pytest.importorskip("diffusers")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import accel  # noqa: E402

F64 = torch.float64


@pytest.mark.parametrize("first", [3, 4, 17, 30, 100])
def test_smallest_steps_finds_the_first_passing_count(first):
    ladder = accel.STEP_LADDER
    asked = []

    def ok(s):
        asked.append(s)
        return s >= first

    assert accel.smallest_steps(ladder, ok, monotone=True) == first
    assert len(asked) <= 2 + len(ladder).bit_length()  # bisection, not a scan
    assert accel.smallest_steps(ladder, ok, monotone=False) == first
    assert accel.smallest_steps(ladder, lambda s: False, monotone=True) is None
    assert accel.smallest_steps(ladder, lambda s: s in (5, 40), monotone=False) == 5  # a scan takes the first


def test_the_diffusers_table_is_the_model_process():
    from diffusers import DDIMScheduler
    process = di.VP("linear")
    sched = DDIMScheduler(num_train_timesteps=accel.TRAIN_STEPS, trained_betas=accel._diffusers_table(process).tolist())
    t = torch.arange(1, accel.TRAIN_STEPS + 1, dtype=F64) / accel.TRAIN_STEPS
    torch.testing.assert_close(sched.alphas_cumprod.double(), process.alpha(t) ** 2, rtol=1e-5, atol=1e-7)


def test_diffusers_dpm_solver_loop_equals_our_solver_on_its_grid():
    """The bench's diffusers loop (the scheduler's own timesteps and update) against diffinfer's
    DPM-Solver++(2M) on that scheduler's grid (``scheduler_grid``), exact mixture denoiser."""
    from diffinfer.integrations.diffusers import scheduler_grid
    from diffusers import DPMSolverMultistepScheduler
    process = di.VP("linear")
    den = ring2d().denoiser(process)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x_T = x_T * float(process.sigma(torch.tensor(process.t_max, dtype=F64)))
    run = accel.diffusers_runner("DPMSolverMultistepScheduler", use_karras_sigmas=True)
    ours_x, nfe = run(den, x_T, 12)
    sched = DPMSolverMultistepScheduler(num_train_timesteps=accel.TRAIN_STEPS,
                                        trained_betas=accel._diffusers_table(process).tolist(),
                                        use_karras_sigmas=True)
    ts = scheduler_grid(sched, 12, process=process)
    ref = di.sample(den, x_T, solver="dpmpp-2m", ts=ts).x
    coarse = di.sample(den, x_T, solver="dpmpp-2m", ts=scheduler_grid(sched, 6, process=process)).x
    gap = float((ours_x - ref).pow(2).mean().sqrt())
    assert nfe == 12
    assert gap < 0.05 * float((coarse - ref).pow(2).mean().sqrt())
