"""Training never loses or overwrites (issue 15): user output directory by default, the
bundled weights only with --replace-bundled, atomic checkpoints, checkpoint on SIGINT /
SIGTERM, resume refused on a different configuration, and a run killed with SIGKILL at
random points several times ends bitwise where the uninterrupted run does."""
import hashlib
import multiprocessing
import os
import pathlib
import random
import signal
import sys
import time

import pytest
import torch

from diffinfer import zoo
from diffinfer.cli import main
from diffinfer.train import ResumeMismatch, TrainConfig, fit

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORK = multiprocessing.get_context("fork")  # the child starts with torch imported: seconds, not minutes


#: each training step lasts at least this long: 80 steps take >= 1.6 s, more than three kills
#: at <= 0.4 s each can let a run progress, so at least three kills land before it finishes
STEP_SECONDS = 0.02


def recipe_tiny(steps: int, started):
    """A tiny recipe: an MLP denoiser on ring2d samples; the batch order from the run's
    generator and a jitter from torch's global generator (both must survive a resume)."""
    from diffinfer import VP, Denoiser
    from diffinfer.nets.mlp import MLPDenoiser
    from diffinfer.toys import ring2d
    from diffinfer.train import denoising_loss
    from diffinfer.zoo import recipes
    data = ring2d().sample(256, seed=0).float()
    kwargs = {"dim": 2, "hidden": 32, "depth": 2}
    process = VP()

    def loss_fn(model, gen):
        if started is not None and not started.is_set():
            started.set()  # training (and its signal handlers) has begun
        time.sleep(STEP_SECONDS)  # a floor on a run's length, so the kills below land mid-run
        idx = torch.randint(0, data.shape[0], (32,), generator=gen)
        jitter = 1.0 + 0.01 * torch.rand(())
        return denoising_loss(Denoiser(model["net"], process, "eps", check=False), data[idx], generator=gen) * jitter

    cfg = TrainConfig(steps=steps, lr=3e-3, warmup=10, ema_decay=0.9, seed=7, checkpoint_every=1)
    config = {"kind": "denoiser", "process": "vp", "prediction": "eps", "shape": [2],
              "networks": {"net": {"arch": "mlp", "kwargs": kwargs}}}
    return recipes.Recipe({"net": MLPDenoiser(**kwargs)}, loss_fn, cfg, config)


def _child(argv, steps, started):
    """A training process: ``diffinfer train tiny ...`` with the tiny recipe registered."""
    from diffinfer.zoo import recipes
    torch.set_num_threads(1)
    recipes.RECIPES["tiny"] = lambda: recipe_tiny(steps, started)
    code = 1
    try:
        code = main(["train", "tiny", "--quiet", *argv])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(argv, steps, kill_after=None, sig=signal.SIGKILL):
    started = FORK.Event()
    proc = FORK.Process(target=_child, args=(argv, steps, started))
    proc.start()
    if kill_after is None:
        proc.join(300)
        return proc.exitcode
    assert started.wait(120), "training did not start"
    time.sleep(kill_after)
    os.kill(proc.pid, sig)
    proc.join(120)
    return proc.exitcode


def _final(out):
    nets, config = zoo.read_checkpoint(out / "tiny.safetensors")
    return nets["net"].state_dict(), config["training"]["final_loss"], config["training"]["steps"]


def test_kill_9_at_random_points_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    steps = 80
    ref_args = ["--out", str(tmp_path / "ref"), "--work-dir", str(tmp_path / "ref-work"), "--checkpoint-every", "1"]
    assert _run(ref_args, steps) == 0
    ref_state, ref_loss, _ = _final(tmp_path / "ref")
    ref_ck = torch.load(tmp_path / "ref-work" / "tiny.pt", weights_only=True)

    rng = random.Random(15)
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--out", str(out), "--work-dir", str(work), "--checkpoint-every", "1"]
    kills, seen_steps = 0, []
    for _ in range(6):
        code = _run(args, steps, kill_after=rng.uniform(0.0, 0.4))
        if code == 0:
            break
        assert code == -signal.SIGKILL
        kills += 1
        ck = work / "tiny.pt"
        if ck.exists():  # every checkpoint on disk is complete (atomic) and loadable
            seen_steps.append(int(torch.load(ck, weights_only=True)["step"]))
    assert kills >= 3, "the training process finished before it could be killed three times"
    assert seen_steps == sorted(seen_steps) and seen_steps[-1] < steps
    assert _run(args, steps) == 0  # resume to the end
    state, loss, done = _final(out)
    assert done == steps and loss == ref_loss
    for k in ref_state:
        assert torch.equal(state[k], ref_state[k]), k
    ck = torch.load(work / "tiny.pt", weights_only=True)
    assert torch.equal(ck["losses"], ref_ck["losses"])
    for k in ref_ck["model"]:
        assert torch.equal(ck["model"][k], ref_ck["model"][k]), k
    for k in ref_ck["ema"]["shadow"]:
        assert torch.equal(ck["ema"]["shadow"][k], ref_ck["ema"]["shadow"][k]), k
    assert torch.equal(ck["generator"], ref_ck["generator"]) and torch.equal(ck["torch_rng"], ref_ck["torch_rng"])
    # no stray temporaries anywhere
    assert sorted(p.name for p in work.iterdir()) == ["tiny.pt"]
    assert sorted(p.name for p in out.iterdir()) == ["tiny.safetensors"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_save_a_checkpoint_and_exit_130(tmp_path, sig):
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--out", str(out), "--work-dir", str(work), "--checkpoint-every", "1h"]  # only the signal saves
    assert _run(args, 100_000, kill_after=0.3, sig=sig) == 130
    ck = torch.load(work / "tiny.pt", weights_only=True)
    assert 1 <= int(ck["step"]) < 100_000
    assert not out.exists() or not (out / "tiny.safetensors").exists()
    assert sorted(p.name for p in work.iterdir()) == ["tiny.pt"]


def _toy(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.ModuleDict({"net": torch.nn.Linear(2, 2)})
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))

    def loss_fn(m, gen):
        idx = torch.randint(0, 64, (8,), generator=gen)
        return ((m["net"](data[idx]) - data[idx].flip(1)) ** 2).mean()
    return model, loss_fn


def test_api_resume_with_other_steps_is_refused_with_the_difference(tmp_path):
    ck = tmp_path / "ck.pt"
    fit(*_toy(), TrainConfig(steps=100, warmup=5, checkpoint_every=0), checkpoint=ck, progress=False)
    with pytest.raises(ResumeMismatch, match="steps: checkpoint 100, this run 300"):
        fit(*_toy(), TrainConfig(steps=300, warmup=5, checkpoint_every=0), checkpoint=ck, progress=False)
    with pytest.raises(ResumeMismatch, match="run.data"):
        fit(*_toy(), TrainConfig(steps=100, warmup=5, checkpoint_every=0), checkpoint=ck, progress=False,
            run_config={"data": "other"})
    # stopping at 100 of a 300-step run and resuming gives the uninterrupted 300-step run
    cfg = TrainConfig(steps=300, warmup=5, checkpoint_every=0)
    full = fit(*_toy(), cfg, progress=False)
    fit(*_toy(), cfg, checkpoint=tmp_path / "b.pt", progress=False, stop_at=100)
    resumed = fit(*_toy(), cfg, checkpoint=tmp_path / "b.pt", progress=False)
    assert resumed.losses == full.losses
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pt", "ck.pt"]  # no temporaries


def test_train_config_rejects_nonpositive_steps():
    with pytest.raises(ValueError, match="steps must be a positive int"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="checkpoint_seconds"):
        TrainConfig(checkpoint_seconds=float("nan"))


def _cli(argv) -> int:
    """``main(argv)``'s exit status, also when argparse exits while parsing."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _digest(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def test_train_steps_0_is_refused_and_the_bundled_file_untouched(capsys):
    before = _digest(zoo.weights_path("sunspots"))
    assert _cli(["train", "sunspots", "--steps", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--steps" in err and "'0'" in err and "Traceback" not in err
    assert main(["train", "sunspots", "--steps", "2", "--quiet", "--out", str(zoo.WEIGHTS_DIR)]) == 2
    assert "--replace-bundled" in capsys.readouterr().err
    assert _digest(zoo.weights_path("sunspots")) == before


def test_train_writes_to_the_user_directory_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFINFER_HOME", str(tmp_path / "home"))
    before = _digest(zoo.weights_path("sunspots"))
    assert main(["train", "sunspots", "--steps", "2", "--quiet"]) == 0
    written = tmp_path / "home" / "models" / "sunspots.safetensors"
    assert f"wrote {written}" in capsys.readouterr().out
    assert zoo.from_checkpoint(written).config["training"]["steps"] == 2
    assert (tmp_path / "home" / "train" / "sunspots.pt").exists()
    assert _digest(zoo.weights_path("sunspots")) == before
    # a different --steps with the same work dir: refused with the difference, nothing written
    mtime = written.stat().st_mtime_ns
    assert main(["train", "sunspots", "--steps", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "steps: checkpoint 2, this run 3" in err and "Traceback" not in err
    assert written.stat().st_mtime_ns == mtime
    assert main(["train", "sunspots", "--steps", "3", "--quiet", "--no-resume"]) == 0


@pytest.mark.parametrize("value,ok", [("200", True), ("90s", True), ("5m", True), ("1h", True), ("0", False),
                                      ("-3", False), ("soon", False), ("0s", False)])
def test_checkpoint_every_values(value, ok, tmp_path, monkeypatch, capsys):
    from diffinfer.zoo import recipes
    seen = {}
    monkeypatch.setattr(recipes, "train_model", lambda name, **kw: seen.update(kw) or tmp_path / "x")
    rc = _cli(["train", "sunspots", "--checkpoint-every", value, "--quiet"])
    assert rc == (0 if ok else 2)
    if ok:
        every, seconds = seen["checkpoint_every"], seen["checkpoint_seconds"]
        assert (every, seconds) == ((200, None) if value == "200" else
                                    (0, {"90s": 90.0, "5m": 300.0, "1h": 3600.0}[value]))
    else:
        assert "--checkpoint-every" in capsys.readouterr().err
