"""EVODiff's mixing coefficient against its definition, argmin_eta ||(1 - eta) D_f + eta D_b||^2,
found per sample by brute force over a fine grid in float64 (independent of the closed form)."""
import pytest
import torch

from diffinfer.solvers.evodiff import variance_optimal_eta

GRID = torch.linspace(0.0, 1.0, 100_001, dtype=torch.float64)  # step 1e-5


def _brute_force_eta(d_f: torch.Tensor, d_b: torch.Tensor) -> torch.Tensor:
    """Per sample, the eta in [0, 1] on GRID with the smallest squared norm of the mix."""
    out = []
    for f, b in zip(d_f.double().flatten(1), d_b.double().flatten(1)):
        # ||(1 - e) f + e b||^2 = ||f||^2 - 2 e <f, f - b> + e^2 ||f - b||^2, tabulated on the grid
        mix = (1 - GRID)[:, None] * f[None, :] + GRID[:, None] * b[None, :]  # [G, D]
        out.append(GRID[mix.square().sum(1).argmin()])
    return torch.stack(out)


@pytest.mark.parametrize("shape", [(5, 1), (4, 7), (3, 2, 3, 4), (6, 1, 8, 8)])
def test_eta_is_the_argmin_of_the_mixed_slope_norm(shape):
    g = torch.Generator().manual_seed(sum(shape))
    d_f = torch.randn(shape, generator=g, dtype=torch.float64)
    # a mix of samples whose unconstrained minimiser lies inside, below and above [0, 1]
    d_b = torch.randn(shape, generator=g, dtype=torch.float64) * torch.rand(shape[0], *[1] * (len(shape) - 1),
                                                                              generator=g, dtype=torch.float64) * 3
    eta = variance_optimal_eta(d_f, d_b)
    assert eta.shape == (shape[0],)
    assert ((eta >= 0) & (eta <= 1)).all()
    torch.testing.assert_close(eta, _brute_force_eta(d_f, d_b), atol=2e-5, rtol=0)


def test_eta_clips_to_the_unit_interval_and_interior_minimisers_are_found():
    # 1-D slopes: ||(1-e) f + e b|| is |f + e (b - f)|, zero at e = f / (f - b)
    d_f = torch.tensor([[1.0], [1.0], [1.0], [-2.0]], dtype=torch.float64)
    d_b = torch.tensor([[-3.0], [2.0], [0.5], [-1.0]], dtype=torch.float64)
    # e* = 1/4 (interior); 1/(1-2) = -1 -> 0; 1/0.5 = 2 -> 1; -2/-1 = 2 -> 1
    torch.testing.assert_close(variance_optimal_eta(d_f, d_b),
                               torch.tensor([0.25, 0.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(variance_optimal_eta(d_f, d_b), _brute_force_eta(d_f, d_b), atol=2e-5, rtol=0)


def test_equal_slopes_give_one_half():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(variance_optimal_eta(d, d.clone()), torch.full((4,), 0.5, dtype=torch.float64))
    z = torch.zeros(2, 6, dtype=torch.float64)
    torch.testing.assert_close(variance_optimal_eta(z, z), torch.full((2,), 0.5, dtype=torch.float64))
