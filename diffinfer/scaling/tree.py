"""Diffusion Tree Sampling (DTS) and its greedy search variant DTS*.

Jain et al. 2025, "Diffusion Tree Sampling: Scalable inference-time alignment of
diffusion models". The denoising chain is a tree: a node is a partial sample ``x_t`` at
one of the *tree levels* (every ``stride`` grid steps of a stochastic solver), its
children are independent draws of the solver's transition to the next level, and the
leaves are clean samples with reward ``r(x_0)``. Each rollout

1. *selects* a path from the root: at a node with fewer children than progressive
   widening allows (``widen_k * visits ** widen_alpha``, Couetoux et al. 2011), it
   expands a new child; otherwise it picks a child with probability
   ``∝ exp(lam v(child))`` (DTS) or, for DTS*, the child of largest upper confidence
   bound ``v(child) + explore * sqrt(log N(node) / N(child))`` (the paper's UCT-style
   selection, Kocsis & Szepesvari 2006; ``N`` the visit counts; ``explore = 0``: argmax);
2. *rolls out* the new child to a leaf with the solver, adding a node at every level;
3. *backs up* soft values ``v(node) = (1/lam) log mean_children exp(lam v(child))``
   (leaves: ``v = r(x_0)``).

Sampling descends from the root with the Boltzmann policy. The probability of reaching a
leaf is ``exp(lam r(leaf)) / (Z prod |children|)``: the leaves reweighted from the base
process, so DTS is anytime and asymptotically exact for ``p(x_0) exp(lam r(x_0))``.
DTS* returns the best leaf found. The root is virtual: its children are starting noises.
Rollouts run in batches (``batch`` selections, then one batched rollout per level).
The solver state is restarted at each node (exact for one-step stochastic solvers such
as ``ddpm``; multistep solvers lose their history there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import solvers as solver_registry
from ..denoiser import DenoiserBase
from ..rng import SampleRNG
from ..loop import initial_noise, rollout
from .common import ScalingResult, Tap, grid, sample_shape, stochastic_solver_names
from .verifiers import as_verifier


@dataclass
class _Node:
    level: int  # tree level; -1 is the virtual root, n_levels is a leaf
    x: Tensor | None
    parent: int
    children: list = field(default_factory=list)
    value: float = -math.inf
    visits: int = 0


class DiffusionTree:
    """The search tree over one model, reward and grid; ``grow`` adds rollouts, ``sample``
    draws from the current soft-value policy, ``best`` returns the best leaf (DTS*).

    Args:
        den, reward: the model and the verifier.
        shape: one sample's shape.
        lam: the tilt ``p(x) exp(lam r(x))``.
        solver: a stochastic solver (``ddpm`` by default).
        steps / ts: the sampler's grid; ``stride``: grid steps between tree levels.
        greedy: DTS* selection (largest upper confidence bound of the soft values) instead
            of Boltzmann sampling.
        explore: DTS*'s exploration constant ``c`` in ``v + c sqrt(log N(parent) / N(child))``
            (in reward units; 0 is pure argmax).
        widen_k, widen_alpha: progressive widening, a node may have
            ``ceil(widen_k * max(visits, 1) ** widen_alpha)`` children. Default ``alpha``:
            1 for sampling (wide trees: the tilted-target tests pass at this setting),
            0.5 for DTS* (deep trees that exploit good nodes).
    """

    def __init__(self, den: DenoiserBase, reward, shape, lam: float = 1.0, solver="ddpm", steps: int = 50,
                 ts=None, stride: int = 5, greedy: bool = False, widen_k: float = 1.0, widen_alpha: float | None = None,
                 explore: float = 1.0, seed: int = 0, dtype=torch.float32, device="cpu", **solver_options):
        self.solver = solver_registry.get(solver, **solver_options)
        if not self.solver.stochastic:
            raise ValueError(f"tree search needs a stochastic solver for its branching transitions; "
                             f"{self.solver.name!r} is deterministic. Use one of: {', '.join(stochastic_solver_names())}")
        if not lam > 0:
            raise ValueError(f"lam must be positive, got {lam}")
        widen_alpha = (0.5 if greedy else 1.0) if widen_alpha is None else float(widen_alpha)
        if int(stride) < 1 or not widen_k > 0 or not 0 <= widen_alpha <= 1:
            raise ValueError("need stride >= 1, widen_k > 0, 0 <= widen_alpha <= 1")
        self.tap = Tap(den)
        self.verifier = as_verifier(reward)
        self._calls0 = self.verifier.calls
        self.shape = sample_shape(shape)
        if not explore >= 0:
            raise ValueError(f"explore must be >= 0, got {explore}")
        self.lam, self.greedy, self.explore = float(lam), bool(greedy), float(explore)
        self.widen_k, self.widen_alpha = float(widen_k), float(widen_alpha)
        self.ts = grid(den.process, steps, ts)
        n_int = self.ts.numel() - 1
        # grid indices of the tree levels: 0 (x_T), stride, 2 stride, ..., n_int (x_0)
        self.level_index = list(range(0, n_int, int(stride))) + [n_int]
        self.n_levels = len(self.level_index) - 1  # leaves sit at this level
        self.seed, self.dtype, self.device = int(seed), dtype, device
        self.nodes: list[_Node] = [_Node(level=-1, x=None, parent=-1)]
        self.leaves: list[int] = []
        self._draws = 0  # counter for fresh random streams
        self._gen = torch.Generator().manual_seed(self.seed ^ 0x7EE)

    # --- selection ----------------------------------------------------------------------
    def _may_widen(self, node: _Node, pending: int) -> bool:
        allowed = math.ceil(self.widen_k * max(node.visits, 1) ** self.widen_alpha)
        return len(node.children) + pending < allowed

    def _pick_child(self, node: _Node) -> int:
        vals = torch.tensor([self.nodes[c].value for c in node.children], dtype=torch.float64)
        if self.greedy:
            return node.children[int(torch.argmax(vals + self.explore * self.bonus(node)))]
        p = torch.softmax(self.lam * vals, 0)
        return node.children[int(torch.multinomial(p, 1, generator=self._gen))]

    def bonus(self, node: _Node) -> Tensor:
        """``sqrt(log N(node) / N(child))`` per child ``[C]`` (DTS*'s exploration bonus)."""
        n_child = torch.tensor([max(self.nodes[c].visits, 1) for c in node.children], dtype=torch.float64)
        return torch.sqrt(math.log(max(node.visits, 1)) / n_child)

    def _select(self, pending: dict) -> int:
        """Descend from the root to the node that gets a new child."""
        k = 0
        while True:
            node = self.nodes[k]
            # a leaf cannot grow, so the level above the leaves always expands
            if not node.children or node.level == self.n_levels - 1 or self._may_widen(node, pending.get(k, 0)):
                pending[k] = pending.get(k, 0) + 1
                return k
            k = self._pick_child(node)

    # --- rollouts -----------------------------------------------------------------------
    def _streams(self, rows: int) -> SampleRNG:
        idx = list(range(self._draws, self._draws + rows))
        self._draws += rows
        return SampleRNG.from_seed(self.seed, indices=idx, device=self.device)

    def _expand(self, parents: list[int]) -> list[int]:
        """Roll out one new child of each parent (all at one level) to a leaf; returns leaves."""
        level = self.nodes[parents[0]].level
        rng = self._streams(len(parents))
        if level == -1:
            x = initial_noise(self.tap, (len(parents),) + self.shape, self.ts, rng, dtype=self.dtype, device=self.device)
            chain_parent = list(parents)
            ids = self._add(x, 0, chain_parent)
            level = 0
        else:
            x = torch.stack([self.nodes[p].x for p in parents])
            ids = list(parents)
        for lv in range(level, self.n_levels):
            x, _ = rollout(self.tap, self.solver, x, self.ts, self.level_index[lv], self.level_index[lv + 1], rng=rng)
            ids = self._add(x, lv + 1, ids)
        return ids

    def _add(self, x: Tensor, level: int, parents: list[int]) -> list[int]:
        ids = []
        for row, p in enumerate(parents):
            self.nodes.append(_Node(level=level, x=x[row], parent=p))
            k = len(self.nodes) - 1
            self.nodes[p].children.append(k)
            ids.append(k)
        return ids

    def _backup(self, leaves: list[int], rewards: Tensor) -> None:
        """Give the new ``leaves`` their rewards, add their visits along their paths, and
        recompute the soft value of every ancestor they touch once, deepest first."""
        touched: dict[int, int] = {}  # ancestor -> new leaves below it
        for k, r in zip(leaves, rewards.tolist()):
            self.nodes[k].value = float(r)
            self.nodes[k].visits = 1
            self.leaves.append(k)
            p = self.nodes[k].parent
            while p != -1:
                touched[p] = touched.get(p, 0) + 1
                p = self.nodes[p].parent
        for p in sorted(touched, key=lambda q: self.nodes[q].level, reverse=True):
            node = self.nodes[p]
            node.visits += touched[p]
            vals = torch.tensor([self.nodes[c].value for c in node.children], dtype=torch.float64)
            node.value = float((torch.logsumexp(self.lam * vals, 0) - math.log(len(vals))) / self.lam)

    def grow(self, rollouts: int, batch: int = 32) -> "DiffusionTree":
        """Add ``rollouts`` rollouts, ``batch`` selections at a time."""
        done = 0
        while done < rollouts:
            b = min(int(batch), rollouts - done)
            pending: dict[int, int] = {}
            chosen = [self._select(pending) for _ in range(b)]
            by_level: dict[int, list[int]] = {}
            for k in chosen:
                by_level.setdefault(self.nodes[k].level, []).append(k)
            for parents in by_level.values():
                leaves = self._expand(parents)
                x0 = torch.stack([self.nodes[k].x for k in leaves])
                self._backup(leaves, self.verifier(x0).double())
            done += b
        return self

    # --- answers ------------------------------------------------------------------------
    def sample_leaves(self, n: int) -> list[int]:
        """Ids of ``n`` leaves drawn by descending with ``p(child) ∝ exp(lam v(child))``."""
        if not self.leaves:
            raise ValueError("the tree is empty: call grow() first")
        out = []
        for _ in range(int(n)):
            k = 0
            while self.nodes[k].children:
                vals = torch.tensor([self.nodes[c].value for c in self.nodes[k].children], dtype=torch.float64)
                p = torch.softmax(self.lam * vals, 0)
                k = self.nodes[k].children[int(torch.multinomial(p, 1, generator=self._gen))]
            out.append(k)
        return out

    def sample(self, n: int) -> Tensor:
        """``n`` samples ``[n, ...]`` from the tree's current estimate of the tilted target."""
        return torch.stack([self.nodes[k].x for k in self.sample_leaves(n)])

    def best(self) -> tuple[Tensor, float]:
        """The highest-reward leaf found so far and its reward."""
        if not self.leaves:
            raise ValueError("the tree is empty: call grow() first")
        k = max(self.leaves, key=lambda j: self.nodes[j].value)
        return self.nodes[k].x, self.nodes[k].value

    @property
    def nfe(self) -> int:
        return self.tap.rows

    @property
    def verifier_calls(self) -> int:
        return self.verifier.calls - self._calls0


def tree_result(tree: DiffusionTree, method: str = "dts", n_samples: int = 1) -> ScalingResult:
    """A grown tree as a ``ScalingResult``: ``n_samples`` draws (DTS) or the best leaf (DTS*)."""
    if method == "dts*":
        x, r = tree.best()
        x, r = x.unsqueeze(0), torch.tensor([r], dtype=x.dtype)
    else:
        ids = tree.sample_leaves(n_samples)
        x = torch.stack([tree.nodes[k].x for k in ids])
        r = torch.tensor([tree.nodes[k].value for k in ids], dtype=x.dtype)  # leaf values are their rewards
    return ScalingResult(x=x, reward=r, nfe=tree.nfe, verifier_calls=tree.verifier_calls, method=method,
                         info={"tree": tree, "rollouts": len(tree.leaves)})


def dts(den: DenoiserBase, reward, rollouts: int, shape, n_samples: int = 1, batch: int = 32, **tree_options) -> ScalingResult:
    """Diffusion Tree Sampling: grow a tree of ``rollouts`` rollouts and draw ``n_samples``
    from ``p(x) exp(lam r(x))`` (``tree_options`` go to ``DiffusionTree``)."""
    tree = DiffusionTree(den, reward, shape, greedy=False, **tree_options).grow(rollouts, batch)
    return tree_result(tree, "dts", n_samples)


def dts_star(den: DenoiserBase, reward, rollouts: int, shape, batch: int = 32, **tree_options) -> ScalingResult:
    """DTS*: greedy tree search (argmax of soft values), returning the best leaf found."""
    tree = DiffusionTree(den, reward, shape, greedy=True, **tree_options).grow(rollouts, batch)
    return tree_result(tree, "dts*")
