"""Quality measures of the bundled models (the bars of the zoo's model cards).

- ``fd_digits``: Frechet distance (Heusel et al. 2017, "FID") between Gaussian fits of the
  clean ``digits-classifier``'s pooled features of samples and of the real digits.
- ``digits_precision_recall``: improved precision / recall by k-NN balls (Kynkaanniemi
  et al. 2019) in the same feature space.
- ``classifier_accuracy``: how often ``digits-classifier`` labels class-conditional samples
  with the class they were asked for.
- ``generative_perplexity``: ``exp`` of the mean next-character NLL under
  ``shakespeare-ar`` (as MDLM, Sahoo et al. 2024, scores samples with GPT-2), and
  ``unigram_entropy`` of the characters (to catch repetition; Zheng et al. 2024).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import metrics
from ..scaling.text import next_token_logp
from .checkpoints import load
from .data import digits, digits_halves, shakespeare_tokens


# --- digits ---------------------------------------------------------------------------
def _check_digits(x: Tensor) -> Tensor:
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"digits must be [N, 1, 8, 8], got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("digit samples contain NaN or Inf")
    return x.float()


def digits_features(x: Tensor, batch: int = 512) -> Tensor:
    """Clean-classifier pooled features ``[N, F]`` (float64) of digits ``[N, 1, 8, 8]``."""
    x = _check_digits(x)
    clean = load("digits-classifier").clean
    with torch.no_grad():
        return torch.cat([clean.features(x[i:i + batch]) for i in range(0, x.shape[0], batch)]).double()


_REAL_FEATURES: dict[int, Tensor] = {}


def real_digits_features() -> Tensor:
    """Features of all 1,797 real digits (computed once per loaded classifier)."""
    clean = load("digits-classifier").clean
    if id(clean) not in _REAL_FEATURES:
        _REAL_FEATURES.clear()
        _REAL_FEATURES[id(clean)] = digits_features(digits()[0])
    return _REAL_FEATURES[id(clean)]


def _reference_features(reference: Tensor | None) -> Tensor:
    return real_digits_features() if reference is None else digits_features(reference)


def fd_digits(samples: Tensor, reference: Tensor | None = None) -> float:
    """Frechet distance in the clean digits classifier's feature space between ``samples``
    and ``reference`` (default: all 1,797 real digits)."""
    return metrics.frechet_distance(digits_features(samples), _reference_features(reference))


def fd_digits_floor(seed: int = 0) -> float:
    """FD between two disjoint random halves of the real digits (the bar's yardstick)."""
    a, b = digits_halves(seed)
    return fd_digits(a, b)


def digits_precision_recall(samples: Tensor, reference: Tensor | None = None, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (k-NN) in the clean classifier's feature space."""
    return metrics.precision_recall_knn(_reference_features(reference), digits_features(samples), k=k)


def classifier_accuracy(samples: Tensor, labels: Tensor) -> float:
    """Fraction of ``samples`` the clean ``digits-classifier`` labels as ``labels``."""
    samples = _check_digits(samples)
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.shape[0] != samples.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {samples.shape[0]} samples")
    predicted = load("digits-classifier").predict(samples)
    return float((predicted == labels).double().mean())


def default_solver() -> str:
    """``dpmpp-2m`` where registered (DPM-Solver++ 2M), else ``ddim``."""
    from .. import solvers
    return "dpmpp-2m" if "dpmpp-2m" in solvers.names() else "ddim"


def sample_digits(model: str = "digits", n: int = 64, labels: Tensor | int | None = None,
                  guidance: float | None = None, solver: str | None = None, steps: int = 50,
                  seed: int = 0, batch: int = 500, **solver_options):
    """``n`` digits ``[n, 1, 8, 8]`` from a bundled digits model and the total NFE.

    ``labels`` (``[n]`` or an int) conditions the model; ``guidance`` applies
    classifier-free guidance at that scale (null class 10). Unconditional when ``labels``
    is ``None``. Batches of ``batch`` rows use sample indices, so results do not depend
    on the batch size.
    """
    from ..guidance import ClassifierFreeGuidance
    from ..loop import sample
    solver = solver or default_solver()
    base = load(model)
    null = int(base.config.get("null_label", 10))
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.int64)
        labels = labels.expand(n).clone() if labels.dim() == 0 else labels
        if labels.shape != (n,):
            raise ValueError(f"labels must be an int or [n]={n}, got {tuple(labels.shape)}")
    out, nfe = [], 0
    for start in range(0, n, batch):
        rows = list(range(start, min(n, start + batch)))
        lab = labels[rows] if labels is not None else torch.full((len(rows),), null, dtype=torch.int64)
        den = base.bind(label=lab)
        if guidance is not None and labels is not None:
            den = ClassifierFreeGuidance(den, guidance, null_label=null)
        with torch.no_grad():
            res = sample(den, shape=(len(rows), *base.shape), solver=solver, steps=steps,
                         seed=(seed, rows), **solver_options)
        out.append(res.x)
        nfe = res.nfe
    return torch.cat(out), nfe


# --- text -----------------------------------------------------------------------------
def heldout_windows(n: int = 64, length: int = 256, seed: int = 0) -> Tensor:
    """``[n, length]`` windows of the held-out Shakespeare split at seeded random offsets."""
    from .data import random_windows
    return random_windows(shakespeare_tokens("heldout"), length, n, torch.Generator().manual_seed(seed))


def ar_nll(tokens: Tensor, batch: int = 32, start: int = 1) -> Tensor:
    """Per-sequence mean NLL (nats per character) of ``tokens`` ``[N, L]`` under
    ``shakespeare-ar``, scoring characters ``start..L-1`` given their prefixes (``start`` > 1
    skips a prompt)."""
    ar = load("shakespeare-ar")
    if tokens.dim() != 2 or not 1 <= start < tokens.shape[1]:
        raise ValueError(f"tokens must be [N, L] with 1 <= start={start} < L, got {tuple(tokens.shape)}")
    if bool((tokens == ar.mask_id).any()):
        raise ValueError("text to score still contains mask tokens")
    return torch.cat([-next_token_logp(ar, chunk)[:, start - 1:].mean(1) for chunk in tokens.split(batch)])


def generative_perplexity(tokens: Tensor, start: int = 1) -> float:
    """``exp(mean NLL per character)`` of ``tokens`` ``[N, L]`` under ``shakespeare-ar``
    (characters ``start..L-1``, see ``ar_nll``)."""
    return math.exp(float(ar_nll(tokens, start=start).mean()))


def unigram_entropy(tokens: Tensor, vocab_size: int | None = None) -> float:
    """Entropy (nats) of the character frequencies of ``tokens`` (``metrics.unigram_entropy``)."""
    return metrics.unigram_entropy(tokens, vocab_size)


TEXT_ORDERS = ("random", "left-to-right", "entropy", "low-confidence")


def sample_text(model=None, n: int = 16, length: int = 256, seed: int = 0, batch: int = 16,
                order: str = "random", steps: int | None = None) -> Tensor:
    """``[n, length]`` samples of a masked-diffusion model (default ``shakespeare-char``),
    one token per step, each drawn from the model's softmax (mask token excluded) at
    temperature 1, by ``diffinfer.mdm.decode``. The order in which positions are unmasked:

    - ``"random"``: uniformly random over the whole canvas, the exact ancestral sampler of a
      time-free masked-diffusion model with as many steps as tokens (Ou et al. 2024, "RADD");
    - ``"left-to-right"``: blocks of one token (LLaDA's semi-autoregressive decoding, Nie et
      al. 2025, at block length 1);
    - ``"entropy"``: the masked position whose predictive distribution has the lowest entropy
      first (Dream's default, Ye et al. 2025);
    - ``"low-confidence"``: the position whose sampled token has the highest probability
      first (LLaDA's low-confidence remasking, Nie et al. 2025).

    ``steps`` (default ``length``: one token per step) unmasks ``length / steps`` tokens per
    step. Row ``i`` uses stream ``(seed, i)``."""
    from ..mdm.decode import decode
    if order not in TEXT_ORDERS:
        raise ValueError(f"unknown order {order!r}; valid: {', '.join(TEXT_ORDERS)}")
    model = load("shakespeare-char") if model is None else model
    if length > model.max_len:
        raise ValueError(f"length {length} exceeds the model's max_len {model.max_len}")
    steps = length if steps is None else int(steps)
    if not 1 <= steps <= length:
        raise ValueError(f"steps must be in [1, {length}], got {steps}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    block = 1 if order == "left-to-right" else None
    if block == 1 and steps != length:
        raise ValueError("left-to-right order unmasks one token per step (steps = length)")
    policy = "random" if order in ("random", "left-to-right") else order
    out = []
    for start in range(0, n, batch):
        rows = list(range(start, min(n, start + batch)))
        res = decode(model, length=length, policy=policy, steps=steps, batch=len(rows), seed=(seed, rows),
                     temperature=1.0, block=block)
        out.append(res.tokens[:, -length:])
    return torch.cat(out)


def masked_elbo(logits_fn, tokens: Tensor, mask_id: int, draws: int = 8, seed: int = 0) -> float:
    """Masked-diffusion ELBO (nats per character; an upper bound on the NLL) of ``tokens``
    ``[N, L]`` under ``logits_fn(tokens) -> [N, L, V]``, averaged over ``draws`` stratified draws
    of the masking times (``train.masked_diffusion_loss``, MDLM / MD4's continuous-time bound;
    draw ``k`` seeded ``seed * 1000 + k``)."""
    from ..train import masked_diffusion_loss
    total = 0.0
    with torch.no_grad():
        for k in range(draws):
            gen = torch.Generator().manual_seed(seed * 1000 + k)
            total += float(masked_diffusion_loss(logits_fn, tokens, mask_id, generator=gen, stratified=True))
    return total / draws


def mdm_elbo(model, tokens: Tensor, draws: int = 8, seed: int = 0) -> float:
    """``masked_elbo`` of a time-free masked model (its ``logits`` and ``mask_id``)."""
    return masked_elbo(model.logits, tokens, model.mask_id, draws, seed)


def text_report(samples: Tensor, n_reference: int = 64, seed: int = 0) -> dict:
    """Generative perplexity and unigram entropy of ``samples`` against held-out text of the
    same length, and the two ratios the ``shakespeare-char`` bar checks."""
    ref = heldout_windows(n_reference, samples.shape[1], seed)
    v = load("shakespeare-ar").vocab_size
    gen_ppl, ref_ppl = generative_perplexity(samples), generative_perplexity(ref)
    ent, ref_ent = unigram_entropy(samples, v), unigram_entropy(ref, v)
    return {"gen_ppl": gen_ppl, "heldout_ppl": ref_ppl, "ppl_ratio": gen_ppl / ref_ppl,
            "entropy": ent, "heldout_entropy": ref_ent, "entropy_rel_diff": abs(ent - ref_ent) / ref_ent,
            "n_samples": int(samples.shape[0]), "length": int(samples.shape[1])}
