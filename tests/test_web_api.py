"""The web demo's JSON API through FastAPI's TestClient: image sizes, samples bitwise equal
to the Python API at the same seed, the drawn mask's pixels kept, bad input -> HTTP 400 with
a message (before any work), run-time failures -> 500 with a message; ``diffinfer serve``'s
input contract; the core package imports no web framework."""
import base64
import importlib
import struct
import subprocess
import sys

import pytest
import torch

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'diffinfer[web]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the test extra)")
from fastapi.testclient import TestClient  # noqa: E402

from diffinfer import grids, inverse, zoo  # noqa: E402
from diffinfer.loop import sample  # noqa: E402
from diffinfer.mdm import decode  # noqa: E402
from diffinfer.viz import digit_grid, image_bytes  # noqa: E402
from diffinfer.web import api  # noqa: E402
from diffinfer.web.app import create_app  # noqa: E402
from diffinfer.zoo import quality  # noqa: E402
from diffinfer.zoo.data import digits  # noqa: E402
from diffinfer.zoo.tasks import restore_digits  # noqa: E402


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app())


def png(data_url: str) -> bytes:
    head, b64 = data_url.split(",", 1)
    assert head == "data:image/png;base64"
    return base64.b64decode(b64)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the PNG header (IHDR)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def grid_size(n: int, nrow: int, scale: int = 8) -> tuple[int, int]:
    """Pixels of ``viz.digit_grid`` of ``n`` 8x8 digits, ``nrow`` per row (1-pixel gaps), scaled."""
    rows = (n + nrow - 1) // nrow
    return ((nrow * 9 + 1) * scale, (rows * 9 + 1) * scale)


# --- the page ---------------------------------------------------------------------------
def test_page_script_and_options(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="d-sample"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    opts = client.get("/api/options").json()
    from diffinfer import solvers
    from diffinfer.mdm.policies import policy_names
    assert opts["solvers"] == solvers.names() and opts["policies"] == policy_names()
    assert opts["methods"] == list(inverse.METHODS)
    assert "unipc/6" in opts["fitted"]["digits"]  # the zoo ships digits' fitted grids


# --- digits -----------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"solver": "ddim", "steps": 3, "n": 5, "seed": 11},
    {"solver": "dpmpp-2m", "steps": 2, "n": 3, "seed": 4, "label": 7, "guidance": 2.0},
    {"solver": "euler-maruyama", "steps": 3, "n": 4, "seed": 9, "label": "2"},  # stochastic: step noise too
])
def test_digits_equal_the_sampling_loop_bitwise(client, body):
    """The samples at a seed are those of ``loop.sample`` on the bundled model (row i on
    stream (seed, i)), bitwise; the PNG is ``viz`` 's of them, ``n`` digits 8 per row."""
    r = client.post("/api/digits", json={**body, "raw": True})
    assert r.status_code == 200, r.text
    got = r.json()
    x = torch.tensor(got["samples"], dtype=torch.float32)  # [n, 1, 8, 8]
    n, label, guidance = body["n"], body.get("label"), body.get("guidance")
    den = zoo.load("digits")
    labels = torch.full((n,), int(label)) if label is not None else torch.full((n,), 10)
    view = den.bind(label=labels)
    if guidance is not None:
        from diffinfer.guidance import ClassifierFreeGuidance
        view = ClassifierFreeGuidance(view, guidance, null_label=10)
    with torch.no_grad():
        ref = sample(view, shape=(n, 1, 8, 8), solver=body["solver"], steps=body["steps"], seed=body["seed"])
    assert torch.equal(x, ref.x)
    assert got["nfe"] == ref.nfe and got["wall_time"] > 0
    data = png(got["image"])
    assert png_size(data) == grid_size(n, min(n, 8))
    assert data == image_bytes(digit_grid(ref.x, nrow=min(n, 8)), scale=8)


def test_digits_grids_named_and_fitted(client):
    """``grid`` picks a ``diffinfer.grids`` family or the zoo's fitted grid of the solver."""
    den = zoo.load("digits")
    r = client.post("/api/digits", json={"solver": "ddim", "steps": 4, "n": 2, "grid": "karras", "raw": True}).json()
    ts = grids.get("karras", den.process, 4)
    ref, _ = quality.sample_digits("digits", 2, None, None, "ddim", 4, 0, ts=ts)
    assert torch.equal(torch.tensor(r["samples"]), ref)
    r = client.post("/api/digits", json={"solver": "unipc", "steps": 4, "n": 2, "grid": "fitted", "raw": True}).json()
    record = grids.best([g for g in grids.load(zoo.grids_path("digits")).values()
                         if g.solver == "unipc" and g.model_ts is None], 4)
    ref, _ = quality.sample_digits("digits", 2, None, None, "unipc", 4, 0, ts=record.grid, **record.solver_options)
    plain, _ = quality.sample_digits("digits", 2, None, None, "unipc", 4, 0)
    assert torch.equal(torch.tensor(r["samples"]), ref) and not torch.equal(ref, plain)
    assert r["grid"] == f"fitted {record.key}" and r["nfe"] == 4


def test_two_solvers_at_one_seed_start_from_the_same_noise(client):
    """The side-by-side view: at one step from the same noise, DDIM (deterministic, eta 0)
    and DDPM (ancestral) share the model's first prediction; their outputs differ only by
    DDPM's added noise, which is zero at the last step (t=0), so the samples agree."""
    a = client.post("/api/digits", json={"solver": "ddim", "steps": 1, "n": 3, "seed": 5, "raw": True}).json()
    b = client.post("/api/digits", json={"solver": "ddpm", "steps": 1, "n": 3, "seed": 5, "raw": True}).json()
    c = client.post("/api/digits", json={"solver": "ddim", "steps": 1, "n": 3, "seed": 6, "raw": True}).json()
    xa, xb, xc = (torch.tensor(v["samples"]) for v in (a, b, c))
    assert torch.allclose(xa, xb, atol=1e-5) and not torch.allclose(xa, xc, atol=1e-2)


# --- text -------------------------------------------------------------------------------
def test_text_history_replays_the_decode(client):
    body = {"policy": "low-confidence", "length": 48, "steps": 48, "seed": 3, "temperature": 1.0}
    r = client.post("/api/text", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    model = zoo.load("shakespeare-char")
    ref = decode(model, length=48, policy="low-confidence", steps=48, seed=3, temperature=1.0)
    assert got["text"] == model.decode(ref.tokens[0].tolist()) == got["frames"][-1]
    assert len(got["frames"]) == got["steps"] == 48 and got["nfe"] == ref.nfe
    mask = got["mask_char"]
    assert [f.count(mask) for f in got["frames"]] == list(range(47, -1, -1))  # one character per step
    assert sorted(got["order"]) == list(range(48))
    for p, s in enumerate(got["order"]):  # committed at its step, masked just before
        assert got["frames"][s][p] == got["text"][p] and (s == 0 or got["frames"][s - 1][p] == mask)


def test_text_prompt_and_self_paced_policy(client):
    r = client.post("/api/text", json={"policy": "threshold", "threshold": 0.5, "length": 32, "prompt": "ROMEO:"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["prompt"] == "ROMEO:" and len(got["text"]) == 32 and mask_free(got["text"], got["mask_char"])
    assert 1 <= got["steps"] <= 32


def mask_free(text, mask):
    return mask not in text


# --- inpainting -------------------------------------------------------------------------
def _mask(holes):
    m = [1] * 64
    for i in holes:
        m[i] = 0
    return m


def test_inpaint_keeps_the_observed_pixels_and_fills_the_holes(client):
    """Projection at zero measurement noise makes ``A x = y`` at the last step: the observed
    pixels are the digit's own (to rounding), the holes are the model's."""
    holes = list(range(18, 22)) + list(range(26, 30)) + list(range(34, 38))
    body = {"method": "projection", "index": 5, "mask": _mask(holes), "steps": 20, "n": 3, "noise": 0.0, "raw": True}
    r = client.post("/api/inpaint", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    out = torch.tensor(got["samples"]).reshape(3, 64)
    x = digits()[0][5].reshape(64)
    keep = torch.tensor(_mask(holes), dtype=torch.bool)
    assert torch.allclose(out[:, keep], x[keep].expand(3, -1), atol=1e-6)
    assert (out[:, ~keep] - x[~keep]).abs().max() > 0.05
    assert got["holes"] == len(holes) and len(got["psnr"]) == 3
    assert png_size(png(got["image"])) == grid_size(5, 5)  # input | measurement | 3 restorations


@pytest.mark.parametrize("method", ["dps", "reddiff"])
def test_inpaint_equals_restore_digits_with_the_drawn_mask(client, method):
    mask = _mask(range(8, 24))
    r = client.post("/api/inpaint", json={"method": method, "index": 2, "mask": mask, "steps": 10, "n": 2,
                                          "seed": 4, "raw": True}).json()
    x = digits()[0][2:3].expand(2, -1, -1, -1).contiguous()
    op = inverse.Inpaint(torch.tensor(mask, dtype=torch.float32).reshape(1, 8, 8), 0.05)
    ref, _, _, nfe = restore_digits("digits", "inpaint", method, x, 0.05, 10, 4, op=op)
    assert torch.equal(torch.tensor(r["samples"]), ref) and r["nfe"] == nfe


def test_restore_digits_default_operator_is_the_tasks():
    x = digits()[0][:2]
    a = restore_digits("digits", "inpaint", "projection", x, 0.05, 5, 0)[0]
    op = inverse.task_operator("inpaint", (1, 8, 8), 0.05)
    b = restore_digits("digits", "inpaint", "projection", x, 0.05, 5, 0, op=op)[0]
    assert torch.equal(a, b)


def test_digit_endpoint(client):
    r = client.get("/api/digit/3").json()
    assert len(r["pixels"]) == 64 and min(r["pixels"]) >= 0 and max(r["pixels"]) <= 1
    assert client.get("/api/digit/5000").status_code == 400


# --- bad input --------------------------------------------------------------------------
BAD = [
    ("/api/digits", {"steps": 0}, "steps must be an integer in [1, 200], got 0"),
    ("/api/digits", {"steps": "abc"}, "steps must be an integer in [1, 200], got 'abc'"),
    ("/api/digits", {"steps": 2.5}, "steps must be an integer"),
    ("/api/digits", {"steps": 10 ** 9}, "steps must be an integer in [1, 200]"),
    ("/api/digits", {"n": 100000}, "n must be an integer in [1, 64]"),
    ("/api/digits", {"solver": "nope"}, "unknown solver 'nope'; valid: "),
    ("/api/digits", {"grid": "zigzag"}, "unknown grid 'zigzag'; valid: default, fitted"),
    ("/api/digits", {"grid": "fitted", "solver": "ddim", "steps": 7}, "no fitted grid for solver 'ddim' at 7 steps"),
    ("/api/digits", {"label": 10}, "label must be an integer in [0, 9]"),
    ("/api/digits", {"guidance": "nan"}, "guidance must be a number in [0.0, 20.0]"),
    ("/api/digits", {"seed": -1}, "seed must be an integer"),
    ("/api/digits", {"model": "shakespeare-char"}, "unknown model 'shakespeare-char'"),
    ("/api/digits", {"stepz": 3}, "unknown fields ['stepz']"),
    ("/api/digits", [1, 2], "the request must be a JSON object"),
    ("/api/text", {"policy": "telepathy"}, "unknown policy 'telepathy'"),
    ("/api/text", {"length": 100000}, "length must be an integer in [1, 256]"),
    ("/api/text", {"length": 16, "steps": 17}, "steps must be an integer in [1, 16]"),
    ("/api/text", {"policy": "threshold", "steps": 8}, "steps does not apply to policy threshold"),
    ("/api/text", {"policy": "random", "threshold": 0.5}, "threshold applies to policy threshold or confident"),
    ("/api/text", {"prompt": "x" * 250}, "prompt must be text of at most 200 characters"),
    ("/api/text", {"prompt": "ROMEO\u00e9"}, "the prompt has characters the model does not know"),
    ("/api/text", {"block": 0}, "block must be an integer in [1,"),
    ("/api/inpaint", {"method": "magic"}, "unknown method 'magic'; valid: dps, reddiff, projection"),
    ("/api/inpaint", {"n": 8, "steps": 500}, "n 8 x steps 500 = 4000 sample-steps; at most 2000"),
    ("/api/inpaint", {"mask": [1] * 63}, "mask must be a list of 64 values"),
    ("/api/inpaint", {"mask": [2] * 64}, "mask must be a list of 64 values"),
    ("/api/inpaint", {"index": 1797}, "index must be an integer in [0, 1796]"),
    ("/api/inpaint", {"noise": -1}, "noise must be a number in [0.0, 1.0]"),
]


@pytest.mark.parametrize("path,body,needle", BAD, ids=[f"{p} {b}"[:60] for p, b, _ in BAD])
def test_bad_input_is_400_with_a_message_before_any_work(client, monkeypatch, path, body, needle):
    def no_work(*a, **k):
        raise AssertionError("a bad request reached the model")
    monkeypatch.setattr(quality, "sample_digits", no_work)
    monkeypatch.setattr(importlib.import_module("diffinfer.mdm.decode"), "decode", no_work)
    monkeypatch.setattr("diffinfer.zoo.tasks.restore_digits", no_work)
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"], r.json()


def test_a_body_that_is_not_json_is_400(client):
    r = client.post("/api/digits", content=b"steps=3", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]


def test_a_failure_at_run_time_is_500_with_a_message(client, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("the network fell over")
    monkeypatch.setattr(quality, "sample_digits", broken)
    r = client.post("/api/digits", json={"steps": 2, "n": 2})
    assert r.status_code == 500 and r.json()["error"] == "RuntimeError: the network fell over"


def test_non_finite_samples_are_an_error_not_an_image(client, monkeypatch):
    monkeypatch.setattr(quality, "sample_digits", lambda *a, **k: (torch.full((2, 1, 8, 8), float("nan")), 2))
    r = client.post("/api/digits", json={"steps": 2, "n": 2})
    assert r.status_code == 500 and "NaN" in r.json()["error"]


def test_the_largest_allowed_requests_are_bounded():
    """The caps keep one request to seconds on a CPU core (about 3,000 digit sample-steps per
    second): digits at most 12,800 sample-steps, inpainting 2,000 with gradients, text 256 steps."""
    assert api.LIMITS["digits_n"] * api.LIMITS["digits_steps"] <= 12_800
    assert api.LIMITS["inpaint_work"] <= 2_000 and api.LIMITS["text_length"] <= 256


# --- diffinfer serve --------------------------------------------------------------------
def _cli(argv, capsys):
    from diffinfer.cli import main
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [(["--port", "0"], "--port: must be an integer in [1, 65535], got '0'"),
                                         (["--port", "abc"], "got 'abc'"),
                                         (["--host", "no-such-host.invalid"], "is not an address of this machine")])
def test_serve_bad_options_are_one_line_exit_2(argv, needle, capsys):
    rc, err = _cli(["serve", *argv], capsys)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_serve_refuses_a_port_in_use(capsys):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        rc, err = _cli(["serve", "--port", str(port)], capsys)
    assert rc == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "choose another --port" in err


def test_serve_without_the_extra_names_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    rc, err = _cli(["serve", "--port", "8123"], capsys)
    assert rc == 1 and "pip install 'diffinfer[web]'" in err and "fastapi" in err


def test_the_core_package_and_the_cli_import_no_web_framework():
    code = ("import sys, diffinfer, diffinfer.cli, diffinfer.web, diffinfer.web.api; "
            "bad = [m for m in ('fastapi', 'uvicorn', 'starlette', 'playwright') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serve_serves_the_page(tmp_path):
    """``diffinfer serve`` end to end: the command starts uvicorn, the page and the API answer."""
    import pathlib
    import time
    import urllib.request

    from diffinfer.web.server import free_port
    port = free_port()
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "diffinfer.cli", "serve", "--port", str(port)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err.txt", "w"))
    try:
        deadline, page = time.monotonic() + 120, None
        while page is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(0.2)
        assert page is not None, (tmp_path / "err.txt").read_text()
        assert 'id="d-sample"' in page
        opts = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/options", timeout=30).read().decode()
        assert '"solvers"' in opts
        assert f"http://127.0.0.1:{port}" in (tmp_path / "err.txt").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
