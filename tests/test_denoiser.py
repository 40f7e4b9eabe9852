"""The one model view: prediction-type round trips, NFE counting, clear errors."""
import pytest
import torch

import diffinfer as di
from diffinfer.grids import Grid
from diffinfer.denoiser import PREDICTIONS, from_x0_eps, to_prediction

F64 = torch.float64


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_round_trip_every_prediction(any_process, prediction):
    """x0, eps -> network target of each type -> x0, eps again, for every process."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, dtype=F64, generator=g)
    eps = torch.randn(6, 3, 4, dtype=F64, generator=g)
    t = torch.linspace(max(any_process.t_min, 0.02), min(any_process.t_max, 0.98), 6, dtype=F64)
    c = any_process.at(t).broadcast(x0)
    x = c.alpha * x0 + c.sigma * eps
    y = from_x0_eps(x0, eps, prediction, c)
    back = to_prediction(y, prediction, x, c)
    torch.testing.assert_close(back.x0, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(back.eps, eps, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("source", PREDICTIONS)
def test_views_agree_across_wrapped_types(source):
    """A network of any type, wrapped, answers every view identically to the x0 oracle."""
    p = di.VP("cosine")
    g = torch.Generator().manual_seed(1)
    W = torch.randn(5, 5, dtype=F64, generator=g) * 0.3

    def true_x0(x, t):
        return torch.tanh(x @ W) * (1 + t[:, None])

    oracle = di.Denoiser(true_x0, p, prediction="x0")

    def net(x, t):
        x0 = true_x0(x, t)
        c = p.at(t).broadcast(x)
        return from_x0_eps(x0, (x - c.alpha * x0) / c.sigma, source, c)

    den = di.Denoiser(net, p, prediction=source)
    x = torch.randn(4, 5, dtype=F64, generator=g)
    for view in PREDICTIONS:
        torch.testing.assert_close(den.as_prediction(x, 0.4, view), oracle.as_prediction(x, 0.4, view),
                                   rtol=1e-9, atol=1e-9)


def test_score_is_gradient_of_log_density():
    from diffinfer.toys import ring2d
    gm, p = ring2d(), di.VP()
    den = gm.denoiser(p)
    x = torch.randn(7, 2, dtype=F64)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.marginal(p, 0.3).log_prob(xr).sum(), xr)
    torch.testing.assert_close(den.score(x, 0.3), grad, rtol=1e-8, atol=1e-8)


def test_nfe_counts_calls_and_is_shared_by_bound_copies():
    den = di.Denoiser(lambda x, t: torch.zeros_like(x), di.VP(), prediction="eps")
    x = torch.randn(3, 2)
    den.x0(x, 0.5)
    den.velocity(x, 0.5)
    bound = den.bind(label=torch.tensor([1, 2, 3]))
    assert den.nfe == 2
    with pytest.raises(TypeError):  # the lambda takes no label: conditioning is passed through
        bound.x0(x, 0.5)


def test_cond_passed_and_selected():
    seen = {}

    def net(x, t, label):
        seen["label"] = label
        return torch.zeros_like(x)

    den = di.Denoiser(net, di.VP(), cond={"label": torch.tensor([4, 5, 6])})
    den.select(torch.tensor([2, 0])).x0(torch.randn(2, 3), 0.5)
    assert seen["label"].tolist() == [6, 4]


def test_time_input_mapping_for_discrete_networks():
    p = di.DiscreteVP()
    seen = {}

    def net(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    den = di.Denoiser(net, p, time_input=p.index)
    den.x0(torch.randn(2, 3), torch.tensor(0.5))
    torch.testing.assert_close(seen["t"], torch.full((2,), 499.0))


def test_wrong_shape_and_nan_are_clear_errors():
    bad_shape = di.Denoiser(lambda x, t: x[:, :1], di.VP())
    with pytest.raises(di.ModelOutputError, match=r"t=0\.5.*shape \(2, 1\).*expected \(2, 3\)"):
        bad_shape.x0(torch.randn(2, 3), 0.5)
    nan = di.Denoiser(lambda x, t: x * float("nan"), di.VP())
    with pytest.raises(di.ModelOutputError, match=r"t=0\.25.*NaN"):
        nan.x0(torch.randn(2, 3), 0.25)
    with pytest.raises(ValueError, match="valid: eps, x0, v, score, velocity"):
        di.Denoiser(lambda x, t: x, di.VP(), prediction="noise")
    with pytest.raises(TypeError, match="Process"):
        di.Denoiser(lambda x, t: x, "vp")
    with pytest.raises(ValueError, match=r"t must be a scalar or shaped \[B\]"):
        di.Denoiser(lambda x, t: x, di.VP()).x0(torch.randn(2, 3), torch.rand(3))


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("with_time_input", [False, True])
def test_grid_point_prediction_equals_predict(any_process, prediction, with_time_input):
    """``predict`` at a grid point (host coefficients, cast grid times) answers what ``predict``
    does at the point's time, for every process and prediction type, with and without ``time_input``;
    a grid of another process takes the ``predict`` path."""
    seen = []

    def net(x, t):  # a network of the given type whose x0 is tanh(x) * (1 + t)
        seen.append(t)
        t64 = t.to(F64) / 1000.0 if with_time_input else t.to(F64)
        c = any_process.at(t64).broadcast(x)
        x0 = torch.tanh(x) * (1 + t64[:, None])
        return from_x0_eps(x0, (x - c.alpha * x0) / c.sigma, prediction, c)

    time_input = (lambda t: t * 1000.0) if with_time_input else None
    den = di.Denoiser(net, any_process, prediction=prediction, time_input=time_input)
    ts = torch.linspace(min(any_process.t_max, 0.95), max(any_process.t_min, 0.05), 5, dtype=F64)
    grid = Grid.of(any_process, ts)
    x = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    for k in range(ts.numel()):
        got = den.predict(x, grid.point(k)).x0
        torch.testing.assert_close(seen[-1], torch.full((3,), float(ts[k]) * (1000.0 if with_time_input else 1.0),
                                                        dtype=F64))
        torch.testing.assert_close(got, den.predict(x, ts[k]).x0, rtol=1e-12, atol=1e-12)
    other = di.VP("linear") if not isinstance(any_process, di.VP) else di.VE()
    assert den.nfe == 2 * ts.numel()
    torch.testing.assert_close(den.predict(x, Grid.of(other, ts).point(2)).x0, den.predict(x, ts[2]).x0, rtol=0, atol=0)


def _wrappers(den):
    """Every Denoiser -> Denoiser wrapper built on ``DenoiserBase._wrap`` (one per module)."""
    from diffinfer.compose import _ScoreTap
    from diffinfer.grids.model_times import ModelTimes
    from diffinfer.guidance import ClassifierFreeGuidance
    from diffinfer.invert import _SamePointMemo
    from diffinfer.scaling.common import Tap
    from diffinfer.scaling.flows import PredictionCache
    from diffinfer.scaling.twisted import LinearGaussianTwist, TwistedDenoiser
    from diffinfer.thresholding import ClipSample
    ts = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    twist = LinearGaussianTwist(torch.ones(1, 2), torch.zeros(1), 0.5)
    return {"Tap": Tap(den), "PredictionCache": PredictionCache(den), "ModelTimes": ModelTimes(den, ts, [0.9, 0.4]),
            "TwistedDenoiser": TwistedDenoiser(den, twist), "_ScoreTap": _ScoreTap(den),
            "_SamePointMemo": _SamePointMemo(den), "ClipSample": ClipSample(den),
            "ClassifierFreeGuidance": ClassifierFreeGuidance(den.bind(label=torch.zeros(1, dtype=torch.long)), 2.0,
                                                             null_label=1)}


def test_wrappers_share_the_models_process_counter_and_grid():
    """A wrapper keeps the wrapped model's process, NFE counter and default grid (a model
    with its own grid, e.g. a diffusers scheduler's, samples on it wrapped or not), and
    refuses what is not a Denoiser."""
    from diffinfer import Denoiser, VP
    grid = lambda steps: torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64) ** 2  # noqa: E731
    den = Denoiser(lambda x, t, **c: torch.zeros_like(x), VP(), prediction="eps", default_ts=grid)
    for name, w in _wrappers(den).items():
        inner = den if name != "ClassifierFreeGuidance" else w.den
        assert w.process is den.process and w._counter is inner._counter, name
        assert w.default_ts is den.default_ts, name
    from diffinfer.scaling.common import Tap
    with pytest.raises(TypeError, match="den must be a Denoiser"):
        Tap(lambda x, t: x)
