import pytest
import torch

import diffinfer as di


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(1)
    yield


ALL_PROCESSES = {
    "vp-linear": lambda: di.VP("linear"),
    "vp-cosine": lambda: di.VP("cosine"),
    "ve": lambda: di.VE(),
    "edm": lambda: di.EDM(),
    "rectified-flow": lambda: di.RectifiedFlow(),
    "discrete-vp": lambda: di.DiscreteVP(),
    "interpolant": lambda: di.Interpolant(lambda t: torch.cos(0.5 * torch.pi * t),
                                          lambda t: torch.sin(0.5 * torch.pi * t)),
}


@pytest.fixture(params=sorted(ALL_PROCESSES))
def any_process(request):
    return ALL_PROCESSES[request.param]()
