"""Safe defaults of ``sample``: no autograd graph across steps unless the model view needs
gradients (measured memory), float32 time inputs for half-precision samples, dtype and device
from the model, a ``[1, ...]`` null condition broadcast by classifier-free guidance."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import diffinfer as di
from diffinfer.guidance import ClassifierFreeGuidance, GradientGuidance

ROOT = pathlib.Path(__file__).resolve().parents[1]

_MEMORY_SCRIPT = r"""
import gc, json, resource, sys, torch
import diffinfer as di
torch.set_num_threads(1)
torch.manual_seed(0)
B, D, H = 1024, 256, 2048
net = torch.nn.Sequential(torch.nn.Linear(D + 1, H), torch.nn.SiLU(), torch.nn.Linear(H, D))  # parameters need grad

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = net
    def forward(self, x, t):
        return self.body(torch.cat([x, t[:, None].to(x.dtype)], 1))

den = di.Denoiser(Net(), di.VP(), "eps")
x = torch.randn(B, D)
with torch.no_grad():
    den.x0(x, 0.5)  # warm-up (allocator, kernels)
gc.collect()

def rss():  # KiB, the resident peak since the reset below (VmHWM), else since the start
    try:
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

try:  # reset the peak to the current resident size (Linux), so import-time peaks do not hide ours
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = rss()
if sys.argv[1] == "forward":  # one forward pass with autograd on (its graph kept)
    out = den.x0(x, 0.5)
    assert out.requires_grad
elif sys.argv[1] == "sample":  # 40 steps, the caller using no no_grad
    out = di.sample(den, x_T=x, solver="dpmpp-2m", steps=40).x
    assert not out.requires_grad
else:  # the control: a view declaring needs_grad keeps the graph across 10 steps
    den.needs_grad = True
    out = di.sample(den, x_T=x, solver="dpmpp-2m", steps=10).x
    assert out.requires_grad
print(json.dumps({"kib": rss() - before}))
"""


def _peak_kib(what: str) -> int:
    # every large block mmap-ed and returned on free: the resident peak tracks live tensors
    # (glibc's adaptive threshold would otherwise keep freed blocks in the heap, at random)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, what], check=True, capture_output=True, text=True,
                         cwd=ROOT, timeout=300, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["kib"]


def test_sampling_memory_stays_within_twice_one_forward_pass():
    """Without the caller's ``no_grad``, a 40-step run keeps no graph: its peak memory growth
    (resident set, fresh process) is within 2x that of one forward pass with autograd on
    (with the graph kept across steps it would be ~40x)."""
    forward, run, kept = _peak_kib("forward"), _peak_kib("sample"), _peak_kib("kept")
    print(f"peak growth: one forward pass {forward} KiB, 40-step sample {run} KiB, "
          f"10 steps keeping the graph {kept} KiB")
    assert forward > 4 * 1024  # the measurement sees the pass (~10 MiB of activations)
    assert run <= 2 * forward, (forward, run)
    assert kept > 5 * forward  # and it would see a graph kept across steps


def test_sample_keeps_no_graph_and_guided_runs_get_gradients():
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)
    den = di.Denoiser(lambda x, t: net(x), di.VP(), "eps")
    x_T = torch.randn(8, 2)
    assert not den.needs_grad
    assert not di.sample(den, x_T=x_T, steps=5).x.requires_grad

    assert ClassifierFreeGuidance(den.bind(label=torch.zeros(8)), 2.0, 0).needs_grad is False
    from diffinfer.toys import ring2d
    oracle = ring2d().denoiser(di.VP())
    target = torch.tensor([2.0, -1.0], dtype=torch.float64)
    grads = []

    def ll(x, t, pred):  # gradient through the model's x0_hat
        assert torch.is_grad_enabled() and pred.x0.requires_grad
        grads.append(1)
        return -((pred.x0 - target) ** 2).sum(1)

    guided = GradientGuidance(oracle, ll, scale=0.3, interval=(0.0, 0.6))
    assert guided.needs_grad
    x0_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = di.sample(guided, x_T=x0_T, solver="euler", steps=10).x
    u = di.sample(oracle, x_T=x0_T, solver="euler", steps=10).x
    assert grads and (g - target).norm(dim=1).mean() < (u - target).norm(dim=1).mean()  # the gradient steered it
    # a view that declares needs_grad keeps the caller's autograd: differentiate through a solve
    den.needs_grad = True
    z = x_T.clone().requires_grad_(True)
    out = di.sample(den, x_T=z, solver="euler", steps=4).x
    out.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_time_input_stays_float32_for_half_precision_samples():
    seen = []

    def net(x, t):
        seen.append(t.dtype)
        return torch.zeros_like(x)

    for time_input in (None, lambda t: t * 1000 - 1):
        den = di.Denoiser(net, di.DiscreteVP(), "eps", time_input=time_input)
        x = torch.randn(2, 3, dtype=torch.bfloat16)
        res = di.sample(den, x_T=x, solver="ddim", steps=3)
        den.raw(x, 0.5)
        assert res.x.dtype == torch.bfloat16
    assert seen and set(seen) == {torch.float32}


def test_dtype_and_device_follow_the_model():
    net = torch.nn.Linear(3, 3).double()
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = net

        def forward(self, x, t):
            return self.lin(x)

    den = di.Denoiser(Net(), di.VP(), "eps")
    res = di.sample(den, shape=(2, 3), steps=2, seed=0)
    assert res.x.dtype == torch.float64 and res.x.device == next(net.parameters()).device
    assert di.sample(den, x_T=torch.randn(2, 3, dtype=torch.float64), steps=2).x.dtype == torch.float64


def test_cfg_broadcasts_a_one_row_null_condition():
    def net(x, t, emb):
        return x * 0.1 + emb.mean(dim=(1, 2))[:, None]

    den = di.Denoiser(net, di.VP(), "eps")
    cond = torch.randn(4, 5, 3)
    null = torch.zeros(1, 5, 3)
    x = torch.randn(4, 2)
    a = ClassifierFreeGuidance(den.bind(emb=cond), 2.5, null_label=null, cond_key="emb").predict(x, 0.4)
    b = ClassifierFreeGuidance(den.bind(emb=cond), 2.5, null_label=null.expand(4, 5, 3), cond_key="emb").predict(x, 0.4)
    torch.testing.assert_close(a.x0, b.x0)
    one = ClassifierFreeGuidance(den.bind(emb=cond[:1]), 2.5, null_label=null, cond_key="emb").predict(x, 0.4)
    torch.testing.assert_close(one.x0[0], ClassifierFreeGuidance(den.bind(emb=cond[:1].expand(4, 5, 3)), 2.5,
                                                                 null_label=null, cond_key="emb").predict(x, 0.4).x0[0])
