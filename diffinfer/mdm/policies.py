"""The unmasking policies by name: ``POLICIES`` (a ``Registry``), ``get_policy``, ``policy_names``.

One table for every policy of ``unmasking``, ``remasking`` (``rcr``), ``dependency`` and
``speculative``, filled here at definition: none of those modules registers anything.
"""
from __future__ import annotations

from ..registry import Registry
from .dependency import DependencyAware
from .remasking import RunningConfidenceRemasking
from .speculative import SpeculativeUnmasking
from .unmasking import Ancestral, Confident, Dilated, Factor, RandomOrder, Threshold, TopKScore, UnmaskPolicy


def _top_k(score: str):
    def factory(**options) -> TopKScore:
        return TopKScore(score, **options)
    return factory


POLICIES = Registry("policy", {
    "dilated": Dilated,
    "random": RandomOrder,
    "ancestral": Ancestral,
    "low-confidence": _top_k("confidence"),
    "margin": _top_k("margin"),
    "entropy": _top_k("entropy"),
    "threshold": Threshold,
    "factor": Factor,
    "confident": Confident,
    "rcr": RunningConfidenceRemasking,
    "dependency": DependencyAware,
    "speculative": SpeculativeUnmasking,
})


def get_policy(policy, **options) -> UnmaskPolicy:
    """A policy from itself or its name (options such as ``threshold=0.9`` go to it)."""
    if isinstance(policy, UnmaskPolicy):
        return policy
    return POLICIES.factory(policy)(**options)


def policy_names() -> list[str]:
    return POLICIES.names()
