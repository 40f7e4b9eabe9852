"""Inference-time scaling for masked-diffusion text: verifiers, best-of-N, SMC.

- Verifiers on token canvases ``[B, L]`` (higher is better): ``RegexScore`` (matches of
  a pattern in the decoded text), ``KeywordScore`` (occurrences of keywords),
  ``TokenCount`` (occurrences of one token id), ``ARLogLikelihood`` (log-likelihood under
  a causal model such as the bundled ``shakespeare-ar``, per token or summed).
- ``next_token_logp``: ``log p(x_i | x_<i)`` of each token under a causal model (what
  ``ARLogLikelihood`` sums; ``zoo.quality``'s generative perplexity uses it too).
- ``text_best_of_n``: ``N`` decodes with ``diffinfer.mdm.decode``, keep the best.
- ``get_text_verifier``: the CLI reward specs ``regex:PATTERN``, ``keyword:W1,W2``, ``ar-loglik``.
- ``run_text``: ``best-of-n`` or ``smc`` sized to a budget of per-sample NFE plus verifier
  calls (the text counterpart of ``budget.run``).
- ``text_smc``: FK-steering SMC over masked-diffusion decoding steps (Singhal et al. 2025,
  applied to text there too): ``N`` canvases are decoded in random order, ``k`` positions
  per step, each drawn from the model's conditional given the unmasked tokens; after each
  step the potential uses the reward of the canvas completed greedily from the same logits
  (no extra model call), and the final weight corrects the lineage to
  ``exp(lam r(x))``. With exact conditionals and ``k = 1`` the unweighted decoder samples
  the model exactly, so the particles target ``p(x) exp(lam r(x))`` (checked against a
  Markov chain by enumeration in the tests).
"""
from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from ..mdm.model import as_masked_model
from ..mdm.sampling import filter_logits, propose_tokens
from ..mdm.unmasking import top_k_mask
from ..rng import SampleRNG
from .common import ScalingResult
from .smc import ORDERED, FeynmanKacWeights, effective_sample_size
from .verifiers import as_verifier


class TokenCount:
    """Occurrences of ``token`` in each canvas ``[B]``."""

    def __init__(self, token: int):
        self.token = int(token)
        self.name = f"count:{self.token}"

    def __call__(self, tokens: Tensor) -> Tensor:
        return (tokens == self.token).sum(1).double()


class RegexScore:
    """Matches of ``pattern`` in ``decode(row)`` ``[B]`` (``decode`` maps ids to text)."""

    def __init__(self, pattern: str, decode):
        self.pattern, self.decode = re.compile(pattern), decode
        self.name = f"regex:{pattern}"

    def __call__(self, tokens: Tensor) -> Tensor:
        return torch.tensor([float(len(self.pattern.findall(self.decode(row)))) for row in tokens.tolist()],
                            dtype=torch.float64)


class KeywordScore:
    """Occurrences of any of ``keywords`` in ``decode(row)`` ``[B]``."""

    def __init__(self, keywords, decode):
        if isinstance(keywords, str):
            keywords = [keywords]
        if not keywords:
            raise ValueError("give at least one keyword")
        self.keywords, self.decode = list(keywords), decode
        self.name = "keywords"

    def __call__(self, tokens: Tensor) -> Tensor:
        texts = [self.decode(row) for row in tokens.tolist()]
        return torch.tensor([float(sum(t.count(k) for k in self.keywords)) for t in texts], dtype=torch.float64)


def next_token_logp(causal_model, tokens: Tensor) -> Tensor:
    """``log p(x_i | x_<i)`` for ``i = 1..L-1`` (float64 ``[N, L-1]``) of ``tokens`` ``[N, L]``
    under a causal model whose ``logits(tokens)[:, i]`` predicts token ``i + 1``."""
    logp = torch.log_softmax(causal_model.logits(tokens[:, :-1]).double(), dim=-1)  # [N, L-1, V]
    return logp.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


class ARLogLikelihood:
    """``log p(x_1..x_{L-1} | x_0)`` under a causal model (``logits[:, i]`` predicts token
    ``i + 1``), summed or per token ``[B]``."""

    def __init__(self, causal_model, per_token: bool = True):
        self.model, self.per_token = causal_model, per_token
        self.name = "ar-loglik"

    def __call__(self, tokens: Tensor) -> Tensor:
        with torch.no_grad():
            ll = next_token_logp(self.model, tokens).sum(1)  # [B]
        return ll / (tokens.shape[1] - 1) if self.per_token else ll


def text_best_of_n(model, reward, n: int, length: int, prompt=None, seed: int = 0, **decode_options) -> ScalingResult:
    """Decode ``n`` canvases with ``diffinfer.mdm.decode`` and keep the best one."""
    from ..mdm.decode import decode
    verifier = as_verifier(reward)
    calls0 = verifier.calls
    res = decode(model, prompt=prompt, length=length, batch=n, seed=seed, **decode_options)  # one prompt: n rows
    r = verifier(res.tokens)
    j = int(torch.argmax(r.double()))
    return ScalingResult(x=res.tokens[j:j + 1], reward=r[j:j + 1], nfe=int(res.nfe_per_row.sum()),
                         verifier_calls=verifier.calls - calls0, method="text-best-of-n",
                         info={"all_rewards": r, "decode": res})


def text_smc(model, reward, n_particles: int, length: int, lam: float = 1.0, tokens_per_step: int = 1,
             potential: str = "difference", resample: str = "systematic", ess_threshold: float = 0.5,
             temperature: float = 1.0, seed: int = 0) -> ScalingResult:
    """FK-steering SMC over masked-diffusion decoding of ``length`` tokens (no prompt).

    Each step reveals ``tokens_per_step`` positions per canvas (random order, one model
    call per canvas); see the module docstring for the weights.
    """
    if int(tokens_per_step) < 1 or int(length) < 1 or int(n_particles) < 1:
        raise ValueError("need n_particles, length and tokens_per_step >= 1")
    if resample in ORDERED:
        raise ValueError(f"the {resample!r} resampler orders particles by a continuous state; token canvases "
                         "have none: use 'systematic' or 'multinomial'")
    weights = FeynmanKacWeights(n_particles, potential, lam, resample, ess_threshold,
                                torch.Generator().manual_seed(int(seed) ^ 0x7E57))
    model = as_masked_model(model)
    verifier = as_verifier(reward)
    calls0 = verifier.calls
    n, L, mask = int(n_particles), int(length), model.mask_id
    tokens = torch.full((n, L), mask, dtype=torch.long)
    rng = SampleRNG.from_seed(seed, batch=n)
    nfe, step, resampled = 0, 0, []
    k = torch.full((n,), int(tokens_per_step), dtype=torch.long)
    while bool((tokens == mask).any()):
        logp = filter_logits(model.logits(tokens), mask, temperature)  # [N, L, V]
        nfe += n
        masked = tokens == mask
        x0 = propose_tokens(logp, rng, greedy=temperature == 0)  # [N, L]
        order = rng.rand((L,), dtype=torch.float64)  # random decoding order, per row
        commit = top_k_mask(order, masked, k)
        tokens = torch.where(commit, x0, tokens)
        step += 1
        if not bool((tokens == mask).any()):
            break
        greedy_fill = torch.where(tokens == mask, logp.argmax(-1), tokens)
        idx = weights.update(verifier(greedy_fill))
        if idx is not None:
            tokens = tokens[idx]
            rng = rng.select(idx).fork(step)
            resampled.append(step)
    r = verifier(tokens).double()
    log_w = weights.final(r)
    idx = weights.draw(log_w)
    return ScalingResult(x=tokens[idx], reward=r[idx], nfe=nfe, verifier_calls=verifier.calls - calls0,
                         method="text-smc", info={"resampled": resampled, "log_weights": log_w,
                                                  "final_ess": effective_sample_size(log_w)})


TEXT_REWARDS = ("regex:PATTERN", "keyword:WORD[,WORD...]", "ar-loglik")
TEXT_METHODS = ("best-of-n", "smc")


def get_text_verifier(spec: str, decode, ar_model=None):
    """A text verifier from a CLI spec: ``regex:PATTERN`` (matches of a Python regex),
    ``keyword:W1,W2`` (occurrences of the comma-separated words), ``ar-loglik`` (per-token
    log-likelihood under ``ar_model``, by default the bundled ``shakespeare-ar``).
    ``decode`` maps a row of ids to text."""
    name, sep, arg = str(spec).partition(":")
    if name == "regex" and sep:
        if not arg:
            raise ValueError("reward 'regex:PATTERN' needs a non-empty pattern")
        try:
            return RegexScore(arg, decode)
        except re.error as e:
            raise ValueError(f"bad regular expression in reward {spec!r}: {e}") from None
    if name == "keyword" and sep:
        words = [w for w in arg.split(",") if w]
        if not words:
            raise ValueError("reward 'keyword:WORD[,WORD...]' needs at least one non-empty word")
        return KeywordScore(words, decode)
    if spec == "ar-loglik":
        if ar_model is None:
            from .. import zoo
            ar_model = zoo.load("shakespeare-ar")
        return ARLogLikelihood(ar_model)
    raise ValueError(f"unknown text reward {spec!r}; valid: {', '.join(TEXT_REWARDS)}")


def decoding_plan(length: int, steps: int) -> tuple[int, int]:
    """``(tokens_per_step k, decoding steps S)`` for ``length`` tokens in at most ``steps``
    steps: ``k = ceil(length / steps)``, ``S = ceil(length / k)`` (so ``S <= steps``)."""
    if int(length) < 1 or int(steps) < 1:
        raise ValueError(f"need length >= 1 and steps >= 1, got length={length}, steps={steps}")
    k = math.ceil(int(length) / int(steps))
    return k, math.ceil(int(length) / k)


def run_text(method: str, model, reward, budget: int, length: int, steps: int = 16, seed: int = 0,
             lam: float = 1.0) -> ScalingResult:
    """Run a text ``method`` within ``budget`` (per-sample NFE plus verifier calls).

    Both methods decode ``length`` tokens in random order, ``k`` per step (``decoding_plan``),
    one model call per canvas and step, so an unsteered canvas costs ``S`` NFE:

    - ``best-of-n``: ``N = budget // (S + 1)`` canvases (``S`` NFE and one verifier call each);
    - ``smc``: ``N = budget // (2 S)`` particles (per particle ``S`` NFE, ``S - 1``
      intermediate verifier calls and one final one).
    """
    if method not in TEXT_METHODS:
        raise ValueError(f"unknown text scaling method {method!r}; valid: {', '.join(TEXT_METHODS)}")
    k, S = decoding_plan(length, steps)
    per = S + 1 if method == "best-of-n" else 2 * S
    n = int(budget) // per
    if n < 1:
        raise ValueError(f"budget {budget} is below one {method} sample ({per} = {S} decoding steps "
                         f"{'+ 1 verifier call' if method == 'best-of-n' else 'x (1 NFE + 1 verifier call)'})")
    if method == "best-of-n":
        return text_best_of_n(model, reward, n, length, seed=seed, policy="random", steps=S)
    return text_smc(model, reward, n, length, lam=lam, tokens_per_step=k, seed=seed)
