"""Exact and empirical laws of short token sequences, shared by the tests that hold a decoder
to an oracle's enumerated joint (``test_mdm_reweighting``, ``test_mdm_ar_energy``,
``test_mdm_speculative``), and a masked model whose positions are independent."""
import itertools

import torch

from diffinfer.metrics import total_variation


def empirical_law(tokens, V: int):
    """Frequencies ``[V ** L]`` of the rows of ``tokens`` ``[N, L]`` (base-``V`` index)."""
    L = tokens.shape[1]
    idx = (tokens * torch.tensor([V ** (L - 1 - i) for i in range(L)])).sum(-1)
    return torch.bincount(idx, minlength=V ** L).double() / len(tokens)


def exact_law(oracle, V: int, L: int):
    """``p(x)`` ``[V ** L]`` of every sequence in the same order, from ``oracle.log_prob``."""
    return oracle.log_prob(torch.tensor(list(itertools.product(range(V), repeat=L)))).exp()


def exact_sets_floor(oracle, V: int, L: int, n: int, reps: int = 6, seed: int = 11) -> float:
    """The largest TV to the exact law over ``reps`` exact sample sets of ``n`` sequences."""
    g = torch.Generator().manual_seed(seed)
    exact = exact_law(oracle, V, L)
    return max(total_variation(empirical_law(oracle.sample(n, L, generator=g), V), exact) for _ in range(reps))


class ProductModel:
    """Every position independent: the same law ``table[i]`` whatever the canvas."""

    def __init__(self, length, vocab, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(length, vocab, generator=g, dtype=torch.float64)
        self.mask_id, self.vocab_size = vocab, vocab + 1

    def logits(self, tokens):
        out = torch.cat([self.table, torch.full((len(self.table), 1), -torch.inf, dtype=torch.float64)], -1)
        return out.expand(tokens.shape[0], -1, -1).clone()
