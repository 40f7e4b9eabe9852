"""Structured channel pruning of denoising networks, with real channel removal.

Two ways to score the prunable units, one surgery:

- ``importance``: task-agnostic importance in the model's output space, after LD-Pruner
  (Castells et al. 2024, "LD-Pruner: Efficient Pruning of Latent Diffusion Models using
  Task-Agnostic Insights"): the change of the network's output (the latent it predicts,
  here ``eps`` / ``v`` / ``x0`` as the model was trained) when one unit is removed,
  averaged over noisy inputs at several noise levels. LD-Pruner compares statistics of
  the latent outputs; we use the mean squared change per entry, averaged over
  ``times`` stratified noise levels (equal rows per level).
- ``learn_masks``: a differentiable mask per unit trained end to end through the sampler,
  after "Effortless Efficiency: Low-Cost Pruning of Diffusion Models" (Zhang et al.
  2024): the masked model's few-step sample is pulled towards the unmasked model's sample
  from the same noise, with a penalty on the expected fraction of parameters kept; every
  solver step is recomputed in the backward pass (their time-step gradient checkpointing;
  ``diffinfer.scaling.noise_opt.differentiable_sample``).

Units. In a UNet ``ResBlock`` (``diffinfer.nets.unet``) the hidden channels between
``conv1`` and ``conv2`` are pruned one GroupNorm group (of ``norm2``) at a time: removing
only part of a group would change that group's statistics, so a group is the smallest unit
whose removal is exact. In a ``Linear -> activation -> Linear`` pair (the DiT's MLP, the
MLP denoiser's blocks) ``group`` hidden neurons make a unit. Block inputs and outputs
(skips, residual streams) keep their width, so the rest of the network is untouched.
The time / label embedding is left whole by default (it runs once per row, not per pixel).

Masking multiplies the consumer layer's input (``conv2`` / the second ``Linear``) by the
unit's value, so value 0 is exactly the network with the unit removed; ``prune`` then
builds the smaller network (new ``Conv2d`` / ``GroupNorm`` / ``Linear`` layers holding the
kept rows and columns): a unit scored or learned under a mask is removed for real, and
parameters and wall time drop.
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser
from ..nets.unet import ResBlock
from .network import replace_network

KINDS = ("resblock", "linear-pair")


@dataclass(frozen=True)
class Site:
    """One prunable hidden layer of a network.

    ``name``: the module's path (``net.get_submodule(name)``); ``kind``: ``"resblock"`` or
    ``"linear-pair"``; ``width``: hidden channels; ``unit_size``: channels per unit;
    ``unit_params``: the parameters one unit holds (removed with it); ``offset``: index of
    the site's first unit in the flat unit vector of ``find_sites``; ``consumer``: the
    relative path of the layer that reads the hidden channels."""

    name: str
    kind: str
    width: int
    unit_size: int
    unit_params: int
    offset: int
    consumer: str

    @property
    def n_units(self) -> int:
        return self.width // self.unit_size

    def units(self, values: Tensor) -> Tensor:
        """This site's slice ``[n_units]`` of a flat unit vector."""
        return values[self.offset:self.offset + self.n_units]

    def channel_values(self, unit_values: Tensor) -> Tensor:
        """Per-channel values ``[width]`` from per-unit values ``[n_units]``."""
        return unit_values.repeat_interleave(self.unit_size)


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters(recurse=False))


def _resblock_site(name: str, block: ResBlock, offset: int) -> Site:
    c1, c2, norm = block.conv1, block.conv2, block.norm2
    width = c1.out_channels
    size = width // norm.num_groups
    per_channel = (c1.weight[0].numel() + (c1.bias is not None) + 2 * (block.emb.in_features + (block.emb.bias is not None))
                   + 2 * int(norm.affine) + c2.weight[:, 0].numel())
    return Site(name, "resblock", width, size, per_channel * size, offset, "conv2")


def _linear_pair(module: nn.Module) -> int | None:
    """The index of the second ``Linear`` if ``module`` is a ``Sequential`` ending in
    ``Linear -> parameter-free activation -> Linear``, else ``None``."""
    if not isinstance(module, nn.Sequential) or len(module) < 3:
        return None
    a, act, b = module[-3], module[-2], module[-1]
    if isinstance(a, nn.Linear) and isinstance(b, nn.Linear) and _params(act) == 0 and not list(act.children()):
        return len(module) - 1
    return None


def find_sites(net: nn.Module, exclude: tuple[str, ...] = ("embed",), group: int = 1) -> list[Site]:
    """The prunable sites of ``net`` in module order (module docstring). Module paths whose
    first component is in ``exclude`` are skipped; ``group`` neurons of a linear pair make
    one unit (the hidden width must be divisible by it)."""
    if int(group) < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    sites, offset = [], 0
    for name, module in net.named_modules():
        if not name or name.split(".")[0] in exclude:
            continue
        if isinstance(module, ResBlock):
            site = _resblock_site(name, module, offset)
        elif (j := _linear_pair(module)) is not None:
            a, b = module[j - 2], module[j]
            hidden = a.out_features
            if hidden % group:
                raise ValueError(f"{name}: hidden width {hidden} is not divisible by group={group}")
            per = a.in_features + (a.bias is not None) + b.out_features
            site = Site(name, "linear-pair", hidden, int(group), per * int(group), offset, str(j))
        else:
            continue
        sites.append(site)
        offset += site.n_units
    if not sites:
        raise ValueError(f"{type(net).__name__} has no prunable site (UNet ResBlocks or Linear-activation-Linear "
                         f"pairs outside {exclude})")
    return sites


def n_units(sites: list[Site]) -> int:
    return sum(s.n_units for s in sites)


def unit_costs(sites: list[Site]) -> Tensor:
    """Parameters held by each unit ``[n_units]`` (float64)."""
    return torch.cat([torch.full((s.n_units,), float(s.unit_params), dtype=torch.float64) for s in sites])


def unit_macs(net: nn.Module, sites: list[Site], *inputs, **kwargs) -> Tensor:
    """Multiply-accumulates per sample each unit costs ``[n_units]`` (float64), measured by
    one forward of ``net(*inputs, **kwargs)`` that records where each site runs: a
    ResBlock unit's ``conv1`` and ``conv2`` weights times the pixels of its resolution, plus
    its two embedding rows once; a linear-pair neuron's two weight vectors times the tokens.
    Rank by this cost (``select(costs=...)``) to buy wall time rather than parameters: a
    parameter at a UNet's coarsest level costs far less time than one at its finest."""
    positions, handles = {}, []
    for s in sites:
        consumer = net.get_submodule(s.name).get_submodule(s.consumer)

        def hook(module, args, name=s.name):
            x = args[0]
            positions[name] = x[0, 0].numel() if isinstance(module, nn.Conv2d) else x[0].numel() // x.shape[-1]

        handles.append(consumer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            net(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    out = []
    for s in sites:
        module = net.get_submodule(s.name)
        if s.kind == "resblock":
            per = (module.conv1.weight[0].numel() + module.conv2.weight[:, 0].numel()) * positions[s.name] \
                + 2 * module.emb.in_features
        else:
            j = int(s.consumer)
            per = (module[j - 2].in_features + module[j].out_features) * positions[s.name]
        out.append(torch.full((s.n_units,), float(per * s.unit_size), dtype=torch.float64))
    return torch.cat(out)


def _check_values(values: Tensor, sites: list[Site], what: str) -> Tensor:
    values = torch.as_tensor(values)
    if values.shape != (n_units(sites),):
        raise ValueError(f"{what} must be [n_units]={n_units(sites)}, got {tuple(values.shape)}")
    return values


@contextmanager
def masked(net: nn.Module, sites: list[Site], values: Tensor):
    """Within the block, each unit's hidden channels reach their consumer multiplied by
    ``values[unit]`` (``[n_units]``; may carry a gradient). Value 0 is exactly the unit
    removed, value 1 the unit as it is. Run the backward pass inside the block when the
    forward was checkpointed (the recomputation must see the same masks)."""
    values = _check_values(values, sites, "values")
    handles = []
    try:
        for s in sites:
            consumer = net.get_submodule(s.name).get_submodule(s.consumer)
            channel = s.channel_values(s.units(values))  # [width]

            def hook(module, args, channel=channel, conv=isinstance(consumer, nn.Conv2d)):
                x = args[0]
                m = channel.to(dtype=x.dtype, device=x.device)
                return (x * (m.view(1, -1, 1, 1) if conv else m),) + tuple(args[1:])

            handles.append(consumer.register_forward_pre_hook(hook))
        yield net
    finally:
        for h in handles:
            h.remove()


# --- scores -------------------------------------------------------------------------
def noisy_batch(den: Denoiser, x0: Tensor, times: int = 8, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_t, t, rows)``: every row of ``x0`` ``[N, ...]`` noised by the process's forward
    law at ``times`` stratified levels ``t_k = t_min + (t_max - t_min) (k + 1/2) / times``
    (``[times * N, ...]``, level-major), the times ``[times * N]`` and the source rows."""
    if int(times) < 1:
        raise ValueError(f"times must be >= 1, got {times}")
    p = den.process
    N, K = x0.shape[0], int(times)
    levels = p.t_min + (p.t_max - p.t_min) * (torch.arange(K, dtype=torch.float64) + 0.5) / K
    t = levels.repeat_interleave(N)  # [K N]
    rows = torch.arange(N).repeat(K)
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn((K * N, *x0.shape[1:]), generator=g, dtype=torch.float64).to(x0.dtype)
    return p.add_noise(x0[rows], eps, t).to(x0.dtype), t, rows


def importance(den: Denoiser, x0: Tensor, sites: list[Site] | None = None, times: int = 8, seed: int = 0,
               batch: int = 1024) -> Tensor:
    """LD-Pruner's output-space importance of every unit ``[n_units]`` (float64).

    ``score[u] = mean || f_{-u}(x_t, t) - f(x_t, t) ||^2 / D`` over the rows of
    ``noisy_batch(den, x0, times, seed)`` (``f`` the network's raw output, ``f_{-u}`` the
    network with unit ``u`` removed; conditioning bound to ``den`` is repeated per level).
    A unit whose removal leaves the output unchanged scores exactly 0."""
    sites = find_sites(den.net) if sites is None else sites
    x_t, t, rows = noisy_batch(den, x0, times, seed)
    d = den.select(rows)
    chunks = [(slice(i, i + batch), d.select(torch.arange(i, min(i + batch, len(rows))))) for i in range(0, len(rows), batch)]

    def outputs():
        return [c.raw(x_t[s], t[s]).double() for s, c in chunks]

    with torch.no_grad():
        base = outputs()
        scores = torch.zeros(n_units(sites), dtype=torch.float64)
        for u in range(scores.numel()):
            values = torch.ones(scores.numel())
            values[u] = 0.0
            with masked(den.net, sites, values):
                out = outputs()
            scores[u] = sum(float((o - b).pow(2).sum()) for o, b in zip(out, base)) / x_t.numel()
    return scores


@dataclass
class MaskFit:
    """``logits`` ``[n_units]`` (higher: keep), the loss ``history`` per iteration, the
    final ``kept`` parameter fraction of the soft mask, and ``seconds``."""

    logits: Tensor
    history: list[float] = field(default_factory=list)
    kept: float = 1.0
    seconds: float = 0.0


def learn_masks(den: Denoiser, x_T: Tensor, keep: float, sites: list[Site] | None = None, solver="ddim",
                steps: int = 8, ts: Tensor | None = None, iterations: int = 60, lr: float = 0.1,
                penalty: float = 20.0, temperature: tuple[float, float] = (1.0, 0.1), init: float = 3.0,
                use_checkpoint: bool = True, costs: Tensor | None = None) -> MaskFit:
    """Differentiable masks trained through the sampler ("Effortless Efficiency").

    The mask of unit ``u`` is ``sigmoid(logit_u / tau)`` with ``tau`` annealed geometrically
    from ``temperature[0]`` to ``temperature[1]`` (so the masks end near 0 or 1). Each of
    ``iterations`` steps minimises

        ||S_m(x_T) - S(x_T)||^2 / ||S(x_T)||^2 + penalty * relu(kept(m) - keep)^2,

    ``S`` the deterministic ``solver`` on ``ts`` (or ``steps`` default steps) from ``x_T``
    ``[B, ...]`` with the unmasked network, ``S_m`` the same with masks ``m``, ``kept(m)``
    the fraction of the sites' cost the soft masks keep (``costs``, default parameters), by gradient steps of length
    ``lr`` in the largest entry (normalised by the largest gradient entry, so units move at
    rates proportional to their gradients; Adam's per-entry normalisation would move every
    unit by nearly ``lr`` and erase the ranking). The network is copied and frozen; only
    the logits learn. Rank units by the returned logits (``select``)."""
    from ..scaling.noise_opt import differentiable_sample
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    net = copy.deepcopy(den.net).requires_grad_(False)
    sites = find_sites(net) if sites is None else sites
    model = replace_network(den, net)
    costs = (unit_costs(sites) if costs is None else _check_values(costs, sites, "costs").double()).to(x_T.dtype)
    costs = costs / costs.sum()
    logits = torch.full((n_units(sites),), float(init), dtype=x_T.dtype, requires_grad=True)
    start = time.perf_counter()
    with torch.no_grad():
        target = differentiable_sample(model, x_T, solver, steps, ts, use_checkpoint=False)
    scale = target.pow(2).mean()
    history, its = [], max(1, int(iterations))
    for k in range(its):
        tau = temperature[0] * (temperature[1] / temperature[0]) ** (k / max(1, its - 1))
        with torch.enable_grad():
            m = torch.sigmoid(logits / tau)
            with masked(net, sites, m):  # the backward pass recomputes the steps: masks still on
                x = differentiable_sample(model, x_T, solver, steps, ts, use_checkpoint)
                kept = (m * costs).sum()
                loss = (x - target).pow(2).mean() / scale + penalty * torch.relu(kept - keep).pow(2)
                (grad,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():  # normalised gradient step: keeps the units' relative rates
            logits -= lr * grad / grad.abs().max().clamp_min(torch.finfo(grad.dtype).tiny)
        history.append(float(loss.detach()))
    with torch.no_grad():
        kept = float((torch.sigmoid(logits / temperature[1]) * costs).sum())
    return MaskFit(logits.detach(), history, kept, time.perf_counter() - start)


# --- which units go -----------------------------------------------------------------
def select(scores: Tensor, sites: list[Site], remove: float, per_cost: bool = True, min_units: int = 1,
           costs: Tensor | None = None) -> Tensor:
    """The units to keep ``[n_units]`` (bool) when removing a ``remove`` fraction of the
    sites' cost (``costs`` ``[n_units]``; default ``unit_costs``, parameters; ``unit_macs``
    for compute): units are removed in ascending order of ``scores`` (divided by their cost
    when ``per_cost``: output change per unit of cost saved), skipping a unit that would
    overshoot the budget or leave its site with fewer than ``min_units``."""
    scores = _check_values(scores, sites, "scores").double()
    if not 0.0 <= remove < 1.0:
        raise ValueError(f"remove must be in [0, 1), got {remove}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or Inf")
    costs = unit_costs(sites) if costs is None else _check_values(costs, sites, "costs").double()
    if not bool((costs > 0).all()):
        raise ValueError("costs must be positive")
    key = scores / costs if per_cost else scores
    owner = torch.cat([torch.full((s.n_units,), i) for i, s in enumerate(sites)])
    left = [s.n_units for s in sites]
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    budget, removed = remove * float(costs.sum()), 0.0
    for u in torch.argsort(key, stable=True).tolist():
        i = int(owner[u])
        if left[i] - 1 < min_units or removed + float(costs[u]) > budget * (1 + 1e-12):
            continue
        keep[u], left[i], removed = False, left[i] - 1, removed + float(costs[u])
    return keep


def random_like(keep: Tensor, sites: list[Site], seed: int = 0) -> Tensor:
    """A random keep vector removing the same number of units from every site as ``keep``
    (so the pruned network has exactly the same shapes, parameters and cost)."""
    keep = _check_values(keep, sites, "keep").bool()
    g = torch.Generator().manual_seed(int(seed))
    out = torch.ones_like(keep)
    for s in sites:
        drop = int((~s.units(keep)).sum())
        idx = torch.randperm(s.n_units, generator=g)[:drop]
        out[s.offset + idx] = False
    return out


# --- surgery ------------------------------------------------------------------------
def _like(old: nn.Module, new: nn.Module, tensors: dict[str, Tensor]) -> nn.Module:
    p0 = next(old.parameters())
    new = new.to(dtype=p0.dtype, device=p0.device)
    with torch.no_grad():
        for k, v in tensors.items():
            getattr(new, k).copy_(v)
            getattr(new, k).requires_grad_(getattr(old, k).requires_grad)
    return new


def _conv(old: nn.Conv2d, c_in: int, c_out: int, weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    new = nn.Conv2d(c_in, c_out, old.kernel_size, stride=old.stride, padding=old.padding, dilation=old.dilation,
                    bias=bias is not None, padding_mode=old.padding_mode)
    return _like(old, new, {"weight": weight, **({"bias": bias} if bias is not None else {})})


def _linear(old: nn.Linear, n_in: int, n_out: int, weight: Tensor, bias: Tensor | None) -> nn.Linear:
    new = nn.Linear(n_in, n_out, bias=bias is not None)
    return _like(old, new, {"weight": weight, **({"bias": bias} if bias is not None else {})})


def _prune_resblock(block: ResBlock, idx: Tensor, groups: int) -> None:
    c1, c2, emb, norm = block.conv1, block.conv2, block.emb, block.norm2
    k, width = idx.numel(), c1.out_channels
    block.conv1 = _conv(c1, c1.in_channels, k, c1.weight[idx], None if c1.bias is None else c1.bias[idx])
    rows = torch.cat([idx, width + idx])  # scale rows, then shift rows
    block.emb = _linear(emb, emb.in_features, 2 * k, emb.weight[rows], None if emb.bias is None else emb.bias[rows])
    new_norm = nn.GroupNorm(groups, k, eps=norm.eps, affine=norm.affine)
    block.norm2 = _like(norm, new_norm, {"weight": norm.weight[idx], "bias": norm.bias[idx]}) if norm.affine else new_norm
    block.conv2 = _conv(c2, k, c2.out_channels, c2.weight[:, idx], c2.bias)


def _prune_linear_pair(seq: nn.Sequential, j: int, idx: Tensor) -> None:
    a, b = seq[j - 2], seq[j]
    k = idx.numel()
    seq[j - 2] = _linear(a, a.in_features, k, a.weight[idx], None if a.bias is None else a.bias[idx])
    seq[j] = _linear(b, k, b.out_features, b.weight[:, idx], b.bias)


def prune(net: nn.Module, keep: Tensor, sites: list[Site] | None = None) -> nn.Module:
    """A smaller copy of ``net`` without the units where ``keep`` ``[n_units]`` is false.

    The kept rows and columns are copied into new, narrower layers; with every unit kept
    the copy computes bitwise what ``net`` computes. Each site must keep a unit."""
    sites = find_sites(net) if sites is None else sites
    keep = _check_values(keep, sites, "keep").bool()
    new = copy.deepcopy(net)
    for s in sites:
        k = s.units(keep)
        if not bool(k.any()):
            raise ValueError(f"site {s.name!r} would lose all its units; keep at least one")
        idx = s.channel_values(k).nonzero().squeeze(1)  # kept channels, ascending
        module = new.get_submodule(s.name)
        if s.kind == "resblock":
            _prune_resblock(module, idx, int(k.sum()))
        else:
            _prune_linear_pair(module, int(s.consumer), idx)
    return new


def pruned_denoiser(den: Denoiser, keep: Tensor, sites: list[Site] | None = None) -> Denoiser:
    """``den`` on ``prune(den.net, keep, sites)`` (same process, prediction, conditioning)."""
    return replace_network(den, prune(den.net, keep, sites))


__all__ = ["Site", "KINDS", "find_sites", "n_units", "unit_costs", "unit_macs", "masked", "noisy_batch", "importance",
           "MaskFit", "learn_masks", "select", "random_like", "prune", "pruned_denoiser"]
