"""``diffinfer generate`` (issue 20, part 1): exact across process counts, crash-safe,
refusing a changed configuration, readable status, clean errors.

Real processes: ``K = 2`` under ``torchrun`` (``python -m torch.distributed.run``) and
``K = 3`` as three processes given ``RANK`` / ``WORLD_SIZE`` (what any launcher sets);
their shards must equal the one-process run bitwise, and that run must equal the user's
own loop (``sample(..., seed=(seed, rows))`` per shard), the oracle of the shard design."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from test_cli_contract import cli  # noqa: E402  (tests/ is on sys.path: pytest's rootdir-relative imports)
from diffinfer.generate import GenerateConfig, generate, load_rows, status
from diffinfer.generate.store import SHARDS, done_shards

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"



def _env(rank=None, world=None, **extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    if rank is not None:
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launch(args, rank=None, world=None, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffinfer.cli", "generate", *map(str, args)], cwd=ROOT,
                            env=_env(rank, world, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs, timeout=120):
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        assert "samples/s per process" in out, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- 1. exactness: K = 1, 2 (torchrun), 3 (RANK / WORLD_SIZE) give the same bits ----------
DIGITS = dict(model="digits", n=11, batch=3, steps=3, seed=5, solver="dpmpp-2m-sde")
DIGITS_ARGS = ["--model", "digits", "--num-samples", 11, "--batch", 3, "--steps", 3, "--seed", 5,
               "--solver", "dpmpp-2m-sde", "--no-progress"]


def test_union_of_shards_from_1_2_3_processes_is_bitwise_the_one_process_output(tmp_path):
    from diffinfer import zoo
    from diffinfer.loop import sample
    torch.set_num_threads(1)
    one = generate(GenerateConfig(**DIGITS), tmp_path / "k1", log=lambda s: None)
    assert (one.rows_drawn, one.rows_skipped) == (11, 0)
    x1 = load_rows(tmp_path / "k1")["x"]  # [11, 1, 8, 8]
    # the oracle: the loop a user writes by hand, one sample() call per shard of 3 rows
    base = zoo.load("digits")
    ref = torch.cat([sample(base.bind(label=torch.full((b - a,), 10)), shape=(b - a, 1, 8, 8), solver="dpmpp-2m-sde",
                            steps=3, seed=(5, list(range(a, b)))).x for a, b in [(0, 3), (3, 6), (6, 9), (9, 11)]])
    assert torch.equal(x1, ref)

    torchrun = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                 "--master-port", str(free_port()), "-m", "diffinfer.cli", "generate",
                                 *map(str, DIGITS_ARGS), "--out", tmp_path / "k2"], cwd=ROOT, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    three = [launch([*DIGITS_ARGS, "--out", tmp_path / "k3"], rank=r, world=3) for r in range(3)]
    finish([torchrun, *three])
    for k in ("k2", "k3"):
        assert torch.equal(load_rows(tmp_path / k)["x"], x1), k
    # the split: shard j (rows [3j, 3j+3)) belongs to rank j mod K
    k2 = {r["rank"]: r for r in status(tmp_path / "k2")["ranks"]}
    assert k2[0]["done"] == [[0, 3], [6, 9]] and k2[1]["done"] == [[3, 6], [9, 11]]
    assert all(r["finished"] and r["world_size"] == 2 for r in k2.values())
    k3 = {r["rank"]: r["done"] for r in status(tmp_path / "k3")["ranks"]}
    assert k3 == {0: [[0, 3], [9, 11]], 1: [[3, 6]], 2: [[6, 9]]}


def test_accelerate_launch_gives_the_same_bits(tmp_path):
    """``accelerate launch`` (on a CPU machine: one process; its multi-process CPU mode needs
    MPI) runs the job unchanged: the rows equal the in-process run bitwise."""
    pytest.importorskip("accelerate")
    one = generate(GenerateConfig(**DIGITS), tmp_path / "k1", log=lambda s: None)
    proc = subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "diffinfer.cli", "generate", *map(str, DIGITS_ARGS), "--out", tmp_path / "acc"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finish([proc])
    assert one.rows_drawn == 11
    assert torch.equal(load_rows(tmp_path / "acc")["x"], load_rows(tmp_path / "k1")["x"])


def test_text_rows_are_exact_across_ranks_and_written_as_json_lines(tmp_path):
    """Masked text (the ``markov`` oracle, ``mdm.decode`` with per-row streams): two ranks
    (in-process) equal one, and one equals ``decode`` per shard with ``seed=(seed, rows)``."""
    from diffinfer.mdm.decode import decode
    from diffinfer.zoo.tasks import load_text_model
    cfg = GenerateConfig("markov", n=7, batch=3, length=12, seed=2, solver="low-confidence", steps=6)
    generate(cfg, tmp_path / "one", log=lambda s: None)
    for r in range(2):
        generate(cfg, tmp_path / "two", rank=r, world_size=2, log=lambda s: None)
    tokens = load_rows(tmp_path / "one")["tokens"]
    assert tokens.shape == (7, 12) and tokens.dtype == torch.int64
    assert torch.equal(load_rows(tmp_path / "two")["tokens"], tokens)
    chain, codec = load_text_model("markov")
    ref = torch.cat([decode(chain, length=12, policy="low-confidence", steps=6, batch=b - a,
                            seed=(2, list(range(a, b)))).tokens for a, b in [(0, 3), (3, 6), (6, 7)]])
    assert torch.equal(tokens, ref)
    lines = (tmp_path / "one" / SHARDS / "rows-000000006-000000007.jsonl").read_text().splitlines()
    assert [json.loads(s) for s in lines] == [{"row": 6, "text": codec.decode(tokens[6].tolist())}]


# --- 2. crash safety: SIGKILL a rank mid-run, three times; the rerun completes exactly ----------
SLOW = ["--model", "generate_models:slow_toy", "--num-samples", 40, "--batch", 2, "--steps", 4, "--seed", 9,
        "--solver", "ddpm", "--no-progress"]


def _shards_of(out, shards):
    return {s for s in done_shards(out) if s in shards}


def _kill_after_next_shard(proc, out, shards, timeout=60.0):
    """SIGKILL ``proc`` as soon as one more of ``shards`` is on disk (while it still runs)."""
    before = len(_shards_of(out, shards))
    deadline = time.monotonic() + timeout
    while len(_shards_of(out, shards)) == before:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.005)
    assert proc.poll() is None, "the rank finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_run_then_rerun_gives_every_row_exactly_once_and_equal_to_an_uninterrupted_run(tmp_path):
    out = tmp_path / "job"
    plan = [(a, a + 2) for a in range(0, 40, 2)]
    rank0 = set(plan[0::2])  # rank 0 of 2 owns shards 0, 2, 4, ...
    # round 1: both ranks; rank 0 is killed after its first shard, rank 1 finishes
    r0, r1 = launch([*SLOW, "--out", out], rank=0, world=2, GEN_TEST_SLEEP=0.08), \
        launch([*SLOW, "--out", out], rank=1, world=2, GEN_TEST_SLEEP=0.08)
    _kill_after_next_shard(r0, out, rank0)
    finish([r1])
    # rounds 2 and 3: rank 0 alone, killed again after one more shard each time
    for _ in range(2):
        _kill_after_next_shard(launch([*SLOW, "--out", out], rank=0, world=2, GEN_TEST_SLEEP=0.08), out, rank0)
    st = status(out)
    assert 3 <= len(_shards_of(out, rank0)) < 10 and st["rows_done"] < 40 and st["missing"]
    killed = {r["rank"]: r for r in st["ranks"]}[0]
    assert not killed["finished"]
    # a temporary left by a write the kill interrupted (planted: the kill lands between writes)
    a, b = sorted(set(plan) - set(done_shards(out)))[0]
    stale = out / SHARDS / f".rows-{a:09d}-{b:09d}.safetensors.x1y2.partial"
    stale.write_bytes(b"half a shard")
    with pytest.raises(ValueError, match="missing rows"):
        load_rows(out)
    # the rerun: with another process count (3), each rank skips what is done
    finish([launch([*SLOW, "--out", out], rank=r, world=3) for r in range(3)])
    got = load_rows(out)["x"]  # checks every row exactly once
    ref = generate(GenerateConfig("generate_models:slow_toy", n=40, batch=2, steps=4, seed=9, solver="ddpm"),
                   tmp_path / "ref", log=lambda s: None)
    assert ref.rows_drawn == 40
    assert torch.equal(got, load_rows(tmp_path / "ref")["x"])
    assert not list((out / SHARDS).glob("*.partial"))
    assert status(out)["rows_done"] == 40


# --- 3. a changed configuration refuses, naming the difference ------------------------------
def test_changed_configuration_refuses_naming_the_differing_keys(tmp_path, capsys, monkeypatch):
    out = tmp_path / "job"
    base = ["generate", "--model", "ring2d", "--n", 20, "--batch", 8, "--steps", 3, "--out", out, "--no-progress"]
    rc, stdout, err = cli(base, capsys)
    assert rc == 0 and "rank 0/1: drew 20 rows" in stdout, err
    rc, stdout, err = cli(base, capsys)  # the same: nothing to do
    assert rc == 0 and "drew 0 rows" in stdout and "20 of its 20 rows were already done" in stdout
    rc, _, err = cli([*base[:-3], "--seed", 1, "--solver", "euler", "--out", out], capsys)
    assert rc == 2 and "Traceback" not in err
    assert "seed: recorded 0, now 1" in err and "solver: recorded 'dpmpp-2m', now 'euler'" in err
    assert "steps" not in err.split("(")[1]  # only the differing keys are named
    # the same spec with other weights (a module:function model whose checkpoint changed)
    monkeypatch.syspath_prepend(str(TESTS))
    cfg = GenerateConfig("generate_models:mlp", n=4, batch=4, steps=2)
    generate(cfg, tmp_path / "mlp", log=lambda s: None)
    monkeypatch.setenv("GEN_TEST_INIT", "1")
    with pytest.raises(ValueError, match="model_fingerprint: recorded"):
        generate(cfg, tmp_path / "mlp", log=lambda s: None)


# --- 4. --status --------------------------------------------------------------------------
def test_status_reports_rows_done_per_rank_and_the_missing_ranges(tmp_path, capsys):
    out = tmp_path / "job"
    cfg = GenerateConfig("ring2d", n=20, batch=6, steps=2)
    generate(cfg, out, rank=1, world_size=2, log=lambda s: None)  # rank 1 of 2 only: shards 6..12, 18..20
    rc, stdout, err = cli(["generate", "--status", out], capsys)
    assert rc == 0, err
    lines = stdout.splitlines()
    assert lines[0] == f"{out}: 8/20 rows done (40.0%), 2/4 shards of 6 rows"
    assert lines[1].startswith("model=ring2d kind=continuous solver=dpmpp-2m steps=2 seed=0")
    assert lines[2] == "missing rows: 0..6, 12..18"
    assert lines[3].startswith("rank 1/2: 8/8 rows (8 drawn by its last run, ") and ", finished, host" in lines[3]
    generate(cfg, out, rank=0, world_size=2, log=lambda s: None)
    rc, stdout, _ = cli(["generate", "--status", out], capsys)
    assert stdout.splitlines()[0] == f"{out}: 20/20 rows done (100.0%), 4/4 shards of 6 rows"
    assert "missing" not in stdout and stdout.count(", finished, host") == 2


# --- 5. bad input: one line, exit 2 (1 for a broken model), nothing written -------------------
BAD = [
    (["--model", "nope", "--n", 4], "unknown model 'nope'; valid: molrg, ring2d, digits, digits-flow, sunspots, markov"),
    (["--model", "digits-classifier", "--n", 4], "does not generate samples"),
    (["--model", "ring2d", "--n", 0], "--n"),
    (["--model", "ring2d", "--n", -3], "--n"),
    (["--model", "ring2d", "--n", 4, "--batch", 0], "--batch"),
    (["--model", "ring2d", "--n", 4, "--solver", "rk9"], "unknown solver 'rk9'; valid:"),
    (["--model", "ring2d", "--n", 4, "--png"], "--png needs a one-channel image model"),
    (["--model", "ring2d", "--n", 4, "--label", 3], "--label"),
    (["--model", "markov", "--n", 4], "--length"),
    (["--model", "markov", "--n", 4, "--length", 8, "--solver", "nope"], "valid: "),
    (["--model", "shakespeare-char", "--n", 4, "--length", 100000], "max_len"),
    (["--model", "generate_models:not_a_model", "--n", 4], "expected a diffinfer Denoiser"),
    (["--model", "no_such_module_xyz:build", "--n", 4], "cannot import"),
    (["--model", "generate_models:nothing_here", "--n", 4], "has no function"),
    (["--model", "diffusers:/no/such/dir", "--n", 4], "is not a directory"),
]


@pytest.mark.parametrize("argv,needle", BAD)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "job"
    rc, _, err = cli(["generate", *argv, "--out", out], capsys)
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffinfer generate") and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert not out.exists()


def test_output_directory_and_status_misuse(tmp_path, capsys, monkeypatch):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"x")
    rc, _, err = cli(["generate", "--model", "ring2d", "--n", 4, "--out", foreign], capsys)
    assert rc == 2 and "is not empty and holds no job.json (it has cat.jpg)" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]
    afile = tmp_path / "f"
    afile.write_text("x")
    rc, _, err = cli(["generate", "--model", "ring2d", "--n", 4, "--out", afile], capsys)
    assert rc == 2 and "is a file" in err
    rc, _, err = cli(["generate", "--status", tmp_path / "none"], capsys)
    assert rc == 2 and "is not a directory" in err
    rc, _, err = cli(["generate", "--status", foreign], capsys)
    assert rc == 2 and "holds no job.json" in err
    rc, _, err = cli(["generate", "--status", foreign, "--model", "ring2d"], capsys)
    assert rc == 2 and "takes no --model" in err
    rc, _, err = cli(["generate", "--model", "ring2d"], capsys)
    assert rc == 2 and "needs --n, --out" in err
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, _, err = cli(["generate", "--model", "ring2d", "--n", 4, "--out", tmp_path / "r"], capsys)
    assert rc == 2 and "RANK=2, WORLD_SIZE=2" in err


def test_a_model_that_returns_nan_is_exit_1_and_writes_no_shard(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "job"
    rc, _, err = cli(["generate", "--model", "generate_models:nan_toy", "--n", 4, "--batch", 2, "--steps", 2,
                      "--out", out], capsys)
    assert rc == 1 and "rows [0, 1] came out NaN" in err and "Traceback" not in err, err
    assert status(out)["rows_done"] == 0 and not list((out / SHARDS).iterdir())


def test_png_grids_beside_image_shards(tmp_path):
    generate(GenerateConfig("digits", n=5, batch=4, steps=2, png=True), tmp_path, log=lambda s: None)
    names = sorted(p.name for p in (tmp_path / SHARDS).iterdir())
    assert names == ["rows-000000000-000000004.png", "rows-000000000-000000004.safetensors",
                     "rows-000000004-000000005.png", "rows-000000004-000000005.safetensors"]
    from diffinfer.viz import read_gray_image
    assert read_gray_image(str(tmp_path / SHARDS / names[0])).shape == (4 * 10, 4 * 37)  # 1 x 4 digits, scale 4


def test_a_saved_diffusers_pipeline_by_path_equals_sample_on_the_bridged_model(tmp_path):
    """``--model diffusers:PATH``: a tiny DDPM pipeline saved offline; each shard equals
    ``di.sample(from_diffusers(pipe), seed=(seed, rows))`` on the pipeline loaded from PATH
    bitwise (on the in-memory one to round-off: its tensors' layouts differ)."""
    diffusers = pytest.importorskip("diffusers")
    from diffinfer.integrations.diffusers import from_diffusers
    from diffinfer.loop import sample
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipe.save_pretrained(tmp_path / "pipe")
    cfg = GenerateConfig(f"diffusers:{tmp_path / 'pipe'}", n=3, batch=2, steps=3, seed=4, png=True)
    generate(cfg, tmp_path / "out", log=lambda s: None)
    got = load_rows(tmp_path / "out")["x"]
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    for p in (loaded, pipe):
        ref = torch.cat([sample(from_diffusers(p), shape=(b - a, 1, 8, 8), steps=3, seed=(4, list(range(a, b)))).x
                         for a, b in [(0, 2), (2, 3)]])
        if p is loaded:  # the same computation: bitwise
            assert torch.equal(got, ref)
        else:  # the in-memory pipeline (same weights, other tensor layouts): round-off (measured 1.5e-6)
            assert float((got - ref).abs().max()) < 1e-5
    assert len(list((tmp_path / "out" / SHARDS).glob("*.png"))) == 2
