"""An autoregressive model as the energy of EDLM reweighting, exact on prefix-shaped canvases.

EDLM (Xu et al. 2024, "Energy-Based Diffusion Language Models") corrects a masked model's
factorised proposal with a residual energy given by a pretrained autoregressive model. When
the unmasked tokens of every canvas form a prefix (semi-autoregressive blocks committed one
block per step, or any left-to-right front), the AR model gives the *exact* marginal
log-probability of the unmasked tokens,

    log p_AR(x_<n) = log p(x_0) + sum_{i=1}^{n-1} log p_AR(x_i | x_<i),

so ``EnergyReweighting(ar_prefix_energy(ar), proposal="commit")`` makes each step's
committed block a self-normalised importance resample of ``p_AR(block | prefix)`` with the
masked model's conditionals as proposal: exact in the limit of many candidates, whatever the
masked model (its quality only sets how many candidates are needed). A canvas that is not
prefix-shaped (a masked position before an unmasked one) is an error, never a wrong number.

``log p(x_0)``: the AR model has no law for the first token (``zoo.quality.ar_nll`` scores
tokens ``1..L-1``); ``initial`` (log-probabilities ``[V]``) adds one, otherwise the first
token keeps the proposal's law (a prompt makes this moot).

Cost: the candidates of a row share its prefix, so ``score_candidates`` (the fast form
``EnergyReweighting`` uses when an energy has it) keeps each row's prefix keys and values
from the previous call and runs a causal ``CharTransformer`` once per call, over the tokens
committed since then followed by the ``W`` new tokens of each of the ``K`` candidates,
attending to the cached prefix without copying it ``K`` times: one energy call is one network
pass. Other causal models (the exact oracles of ``toys.CausalOracle``) are scored on whole rows.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def prefix_lengths(tokens: Tensor, mask_id: int) -> Tensor:
    """Number of leading unmasked tokens ``[N]`` of ``tokens`` ``[N, L]``; ``ValueError`` if a
    row holds an unmasked token after a masked one (not prefix-shaped)."""
    masked = tokens == mask_id  # [N, L]
    after = masked.long().cumsum(-1) > 0  # [N, L]: at or after the first mask
    bad = ~masked & after
    if bool(bad.any()):
        row = int(bad.any(-1).nonzero()[0, 0])
        first = int(masked[row].nonzero()[0, 0])
        later = int(bad[row].nonzero()[0, 0])
        raise ValueError(f"the AR prefix energy needs prefix-shaped canvases (unmasked tokens, then masks), "
                         f"but row {row} has position {first} masked and position {later} unmasked; decode "
                         f"left to right, e.g. block=k with steps=length/k (one block per step)")
    return (~after).sum(-1)


def _causal_net(ar):
    """The causal ``CharTransformer`` behind ``ar`` when its logits are the network's own
    (no shift), else ``None`` (duck-typed: ``forward_with_cache`` and causal attention)."""
    net = getattr(ar, "net", None)
    if net is None or getattr(ar, "shift_logits", False) or getattr(net, "attention", None) != "causal":
        return None
    return net if hasattr(net, "forward_with_cache") and hasattr(net, "blocks") else None


def _continuation_logits(net, keys: list[Tensor], values: list[Tensor], window: Tensor, start: int):
    """Causal logits ``[n, K, W, V]`` of ``K`` continuations ``window`` ``[n, K, W]`` at
    positions ``[start, start+W)`` of a causal ``CharTransformer`` given the shared prefix's
    per-layer keys/values ``[n, H, start, Dh]``; also the continuations' own keys/values
    ``[n, K, H, W, Dh]`` per layer. Attention over ``[prefix | window]`` is one softmax split
    in two blocks, so the prefix is never copied ``K`` times."""
    n, K, W = window.shape
    x = net._embed(window.reshape(n * K, W), start)  # [nK, W, D]
    causal = torch.ones(W, W, dtype=torch.bool, device=window.device).tril()  # [W, W]
    new_k, new_v = [], []
    for block, kp, vp in zip(net.blocks, keys, values):
        attn = block.attn
        q, k, v = attn._heads(block.ln1(x))  # each [nK, H, W, Dh]
        H, Dh = q.shape[1], q.shape[3]
        q, k, v = (t.reshape(n, K, H, W, Dh) for t in (q, k, v))
        scale = 1.0 / math.sqrt(Dh)
        s_pre = torch.einsum("nkhwd,nhsd->nkhws", q, kp) * scale  # [n, K, H, W, S]
        s_win = torch.einsum("nkhwd,nkhud->nkhwu", q, k) * scale  # [n, K, H, W, W]
        s_win = s_win.masked_fill(~causal, -torch.inf)
        p = torch.softmax(torch.cat([s_pre, s_win], dim=-1), dim=-1)
        S = kp.shape[2]
        y = torch.einsum("nkhws,nhsd->nkhwd", p[..., :S], vp) + torch.einsum("nkhwu,nkhud->nkhwd", p[..., S:], v)
        y = attn.out(y.permute(0, 1, 3, 2, 4).reshape(n * K, W, H * Dh))  # [nK, W, D]
        x = x + y
        x = x + block.mlp(block.ln2(x))
        new_k.append(k)
        new_v.append(v)
    logits = net.head(net.ln_f(x)).reshape(n, K, W, -1)
    return logits, new_k, new_v


class ARPrefixEnergy:
    """``log p_AR`` of the unmasked prefix of each canvas (see the module docstring).

    Args:
        ar: a causal model, ``logits(tokens [N, n]) -> [N, n, V]`` with ``logits[:, i]``
            predicting token ``i + 1`` (the zoo's ``shakespeare-ar``, ``toys.CausalOracle``).
        mask_id: the masked model's mask token (default ``ar.mask_id``).
        initial: optional log-probabilities ``[V]`` of the first token.
    """

    def __init__(self, ar, mask_id: int | None = None, initial: Tensor | None = None):
        if not callable(getattr(ar, "logits", None)):
            raise TypeError(f"ar must be a causal model with logits(tokens), got {type(ar).__name__}")
        if getattr(ar, "causal", True) is False:
            raise ValueError("ar is not a causal (autoregressive) model; give e.g. zoo.load('shakespeare-ar')")
        mask_id = getattr(ar, "mask_id", None) if mask_id is None else mask_id
        if mask_id is None:
            raise ValueError("give mask_id (the masked model's mask token): the AR model has none")
        self.ar, self.mask_id = ar, int(mask_id)
        self.initial = None if initial is None else torch.as_tensor(initial, dtype=torch.float64)
        self.net = _causal_net(ar)
        self._memo = None  # (prefix tokens [n, s], keys, values, log p(prefix) [n], last logp [n, V])

    # ---- the plain energy: whole rows ------------------------------------------------------
    def _first(self, x0: Tensor) -> Tensor:
        if self.initial is None:
            return torch.zeros(x0.shape, dtype=torch.float64)
        return self.initial[x0.clamp_max(len(self.initial) - 1)]

    def __call__(self, tokens: Tensor) -> Tensor:
        """``log p_AR(x_<n)`` ``[N]`` (float64) of each row's unmasked prefix ``tokens`` ``[N, L]``
        (0 for an empty prefix)."""
        tokens = torch.as_tensor(tokens).long()
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [N, L], got shape {tuple(tokens.shape)}")
        n = prefix_lengths(tokens, self.mask_id)  # [N]
        out = torch.where(n > 0, self._first(tokens[:, 0]), torch.zeros((), dtype=torch.float64))
        m = int(n.max()) if len(n) else 0
        if m >= 2:
            x = tokens[:, :m]
            with torch.no_grad():
                logp = torch.log_softmax(torch.as_tensor(self.ar.logits(x[:, :-1])).double(), -1)  # [N, m-1, V]
            lp = logp.gather(-1, x[:, 1:, None].clamp_max(logp.shape[-1] - 1))[..., 0]  # [N, m-1]
            keep = torch.arange(1, m)[None, :] < n[:, None]  # token i scored iff i < n
            out = out + torch.where(keep, lp, torch.zeros((), dtype=torch.float64)).sum(-1)
        if bool(torch.isnan(out).any()):
            raise ValueError("the AR model returned NaN log-probabilities")
        return out

    # ---- the fast form: K candidates sharing a prefix ---------------------------------------
    def score_candidates(self, tokens: Tensor, filled: Tensor, drawn: Tensor) -> Tensor:
        """The energy ``[n, K]`` of ``filled`` ``[n, K, L]`` (``tokens`` ``[n, L]`` with the
        ``drawn`` ``[n, L]`` positions filled, one candidate per ``K``); equal to
        ``self(filled.reshape(-1, L)).reshape(n, K)`` up to round-off, computing each row's
        prefix once."""
        return self._score(tokens, filled, want_next=False)[0]

    def score_and_next(self, tokens: Tensor, filled: Tensor) -> tuple[Tensor, Tensor]:
        """``score_candidates`` and, from the same evaluation, each candidate's next-token
        log-law ``[n, K, V]`` after its filled prefix (the AR conditional of the position that
        follows it)."""
        return self._score(tokens, filled, want_next=True)

    def _score(self, tokens: Tensor, filled: Tensor, want_next: bool):
        n_rows, K, L = filled.shape
        flat = filled.reshape(-1, L)
        s = prefix_lengths(tokens, self.mask_id)  # [n]
        e = prefix_lengths(flat, self.mask_id).reshape(n_rows, K)  # [n, K]
        if self.net is None or not bool((e == e[:, :1]).all()):
            return self(flat).reshape(n_rows, K), (self._next_generic(flat).reshape(n_rows, K, -1)
                                                   if want_next else None)
        e = e[:, 0]
        out, nxt = torch.empty(n_rows, K, dtype=torch.float64), None
        groups = torch.stack([s, e], -1).unique(dim=0)
        for s_g, e_g in groups.tolist():
            rows = ((s == s_g) & (e == e_g)).nonzero()[:, 0]
            lp, nx = self._score_group(tokens[rows, :s_g], filled[rows][:, :, s_g:e_g], len(rows) == n_rows,
                                       want_next)
            out[rows] = lp
            if want_next:
                nxt = torch.empty(n_rows, K, nx.shape[-1], dtype=torch.float64) if nxt is None else nxt
                nxt[rows] = nx
        return out, nxt

    def _next_generic(self, flat: Tensor) -> Tensor:
        """Next-token log-law ``[N, V]`` after each row's prefix, from whole rows."""
        n = prefix_lengths(flat, self.mask_id)
        if bool((n == 0).any()):
            if self.initial is None:
                raise ValueError("an empty prefix has no AR next-token law; give initial= or a prompt")
        m = max(1, int(n.max()))
        with torch.no_grad():
            logp = torch.log_softmax(torch.as_tensor(self.ar.logits(flat[:, :m])).double(), -1)  # [N, m, V]
        out = logp[torch.arange(len(flat)), (n - 1).clamp_min(0)]
        if self.initial is not None and bool((n == 0).any()):
            init = torch.full((out.shape[-1],), -torch.inf, dtype=torch.float64)
            init[: len(self.initial)] = self.initial
            out = torch.where((n == 0)[:, None], init, out)
        return out

    def _cached_prefix(self, prefix: Tensor, memo_ok: bool):
        """What the previous call left of ``prefix`` ``[n, s]``: per-layer keys/values of its
        first ``s0`` tokens, ``log p`` of them ``[n]`` and the next-token log-law after them
        ``[n, V]`` (``None`` for ``s0 = 0``), and ``s0``. Nothing runs the network here: the
        ``s - s0`` tokens committed since then are evaluated in the same pass as the candidates."""
        net, (n, s) = self.net, prefix.shape
        memo = self._memo if memo_ok else None
        if memo is not None and memo[0].shape[0] == n and 0 < memo[0].shape[1] <= s \
                and bool((prefix[:, :memo[0].shape[1]] == memo[0]).all()):
            return memo[1], memo[2], memo[3], memo[4], memo[0].shape[1]
        p = net.tok.weight
        h, dh = net.blocks[0].attn.n_heads, net.tok.embedding_dim // net.blocks[0].attn.n_heads
        empty = [p.new_zeros(n, h, 0, dh) for _ in net.blocks]
        return empty, empty, torch.zeros(n, dtype=torch.float64), None, 0

    def _score_group(self, prefix: Tensor, window: Tensor, memo_ok: bool, want_next: bool = False):
        """``log p(prefix) + log p(window | prefix)`` ``[n, K]`` for ``window`` ``[n, K, W]`` and,
        with ``want_next``, the next-token log-law ``[n, K, V]`` after each candidate.

        One network pass per call: the prefix tokens not yet cached (those committed since the
        previous call, or the whole prompt on the first) lead every candidate's window, so the
        new prefix keys/values, the candidates' scores and their next-token laws come out of
        the same evaluation (the ``K`` copies of the leading tokens are identical)."""
        n, K, W = window.shape
        s = prefix.shape[1]
        with torch.no_grad():
            keys, values, lp_prefix, last, s0 = self._cached_prefix(prefix, memo_ok)
            delta = prefix[:, s0:]  # [n, d]: evaluated with the candidates
            d = s - s0
            full = torch.cat([delta[:, None].expand(n, K, d), window], dim=-1)  # [n, K, d + W]
            # positions whose next-token law is needed (all of them when only prefix tokens are new)
            run = full if (want_next or W == 0) else full[..., :-1]
            lw = None
            if run.shape[-1]:
                logits, k_new, v_new = _continuation_logits(self.net, keys, values, run, s0)
                lw = torch.log_softmax(logits.double(), -1)  # [n, K, d + W (- 1), V]
            # the log-law of each token of `full` given what precedes it: [n, K, d + W]
            if d + W == 0:  # nothing new: the cached prefix's own score and next-token law
                lp = lp_prefix[:, None].expand(n, K).clone()
                if not want_next:
                    return lp, None
                if s == 0:
                    return lp, self._next_generic(torch.full((1, 1), self.mask_id)).expand(n, K, -1)
                return lp, last[:, None].expand(n, K, last.shape[-1])
            first = self._first(full[..., 0]) if s0 == 0 else last[:, None].expand(n, K, -1).gather(
                -1, full[..., :1])[..., 0]  # [n, K]
            rest = lw[:, :, :d + W - 1].gather(-1, full[..., 1:, None])[..., 0] if d + W > 1 else \
                torch.zeros(n, K, 0, dtype=torch.float64)  # [n, K, d + W - 1]
            lp = lp_prefix[:, None] + first + rest.sum(-1)  # [n, K]
            nxt = lw[:, :, -1] if want_next else None
            if memo_ok and d and s:
                lp_new = lp_prefix + first[:, 0] + rest[:, 0, :d - 1].sum(-1)  # [n]
                self._memo = (prefix.clone(), [torch.cat([kp, kn[:, 0, :, :d]], dim=2) for kp, kn in zip(keys, k_new)],
                              [torch.cat([vp, vn[:, 0, :, :d]], dim=2) for vp, vn in zip(values, v_new)],
                              lp_new, lw[:, 0, d - 1])
        if bool(torch.isnan(lp).any()):
            raise ValueError("the AR model returned NaN log-probabilities")
        return lp, nxt


def ar_prefix_energy(ar, mask_id: int | None = None, initial: Tensor | None = None) -> ARPrefixEnergy:
    """``ARPrefixEnergy(ar, mask_id, initial)``: the energy for
    ``EnergyReweighting(..., proposal="commit")`` on prefix-shaped (block-by-block) decodes."""
    return ARPrefixEnergy(ar, mask_id, initial)
