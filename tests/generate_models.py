"""Models for tests/test_generate.py, loaded by ``diffinfer generate --model generate_models:NAME``
(``module:function`` specs) in real subprocesses."""
import os
import time

import torch

from diffinfer import VP, Denoiser


def slow_toy():
    """An element-wise model (bitwise batch-invariant) that sleeps ``GEN_TEST_SLEEP`` seconds
    per call, so a test can kill a process in the middle of a run."""
    delay = float(os.environ.get("GEN_TEST_SLEEP", "0"))

    def net(x, t):
        if delay:
            time.sleep(delay)
        return torch.tanh(0.8 * x)

    den = Denoiser(net, VP(), prediction="x0")
    den.shape = (3,)
    return den


def nan_toy():
    den = Denoiser(lambda x, t: x * float("nan"), VP(), prediction="x0", check=False)
    den.shape = (2,)
    return den


def not_a_model():
    return 42


def mlp():
    """A small MLP denoiser whose weights depend on ``GEN_TEST_INIT`` (a changed checkpoint)."""
    from diffinfer.nets import MLPDenoiser
    torch.manual_seed(int(os.environ.get("GEN_TEST_INIT", "0")))
    net = MLPDenoiser(2)
    den = Denoiser(net, VP(), prediction="eps")
    den.shape = (2,)
    return den
