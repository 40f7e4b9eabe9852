"""Masked-diffusion language-model decoding: one loop, every policy a small part.

``decode(model, prompt, length, policy=..., block=..., cache=...)``; see ``decode.py`` for
the loop, ``unmasking``/``blocks``/``remasking``/``caching`` for the parts, ``policies`` for
every unmasking policy by name, ``model`` for the protocol a model answers, ``schedules`` for
the masked forward process, ``template`` for structured-output scaffolding (S^3) and
``metrics`` for exact quality on a Markov chain, ``trace`` for a decode's history
(``DecodeTrace``: every canvas and the step that committed each position), ``posterior`` for
posterior sampling under token observations (likelihood-tilted logits, SMC), ``aps`` for
Anchored Posterior Sampling (quantized expectation, anchored remasking), ``restore`` for
restoring corrupted token sequences (text), ``conditional``
for a model bound to one condition per row (``Conditioned``: captioning an image), ``refine`` for
LaDiC's Back&Refine (``back_and_refine``), ``ar_energy`` for an autoregressive model as EDLM's
energy on block-by-block decodes (``ar_prefix_energy``).
"""
from .ar_energy import ARPrefixEnergy, ar_prefix_energy
from .ar_reweighting import ARCompletedReweighting
from .blocks import AdaptiveBlocks, BlockPolicy, FixedBlocks, WholeCanvas, get_block_policy
from .caching import CACHE_MODES, LogitsEvaluator, guided
from .aps import AnchoredRemasking, QuantizedExpectation, aps_sample, channel_codebook, sum_codebook
from .conditional import Conditioned
from .decode import DecodeResult, decode
from .model import CharTransformerModel, MaskedModel, as_masked_model, shift_right
from .refine import RefineResult, back_and_refine, leave_one_out_confidence
from .posterior import (LikelihoodTilt, SumPotential, clamped_canvas, marginal_tv, posterior_gibbs, posterior_smc,
                        rao_blackwell_marginals, value_covariance, weighted_marginals)
from .restore import RESTORE_METHODS, channel_likelihood, character_error_rate, corrupt, restore
from .policies import POLICIES, get_policy, policy_names
from .remasking import RunningConfidenceRemasking
from .reweighting import EnergyReweighting
from .schedules import (CosineSchedule, LinearSchedule, LogLinearSchedule, MaskSchedule, forward_mask,
                        get_schedule, reveal_probability, transfer_counts)
from .template import Template
from .trace import DecodeTrace
from .unmasking import (Ancestral, Confident, Dilated, Factor, RandomOrder, Selection, StepContext, Threshold,
                        TopKScore, UnmaskPolicy)

__all__ = [
    "decode", "DecodeResult", "DecodeTrace",
    "MaskedModel", "CharTransformerModel", "as_masked_model", "shift_right",
    "MaskSchedule", "LinearSchedule", "CosineSchedule", "LogLinearSchedule", "get_schedule",
    "forward_mask", "transfer_counts", "reveal_probability",
    "UnmaskPolicy", "StepContext", "Selection", "RandomOrder", "Ancestral", "TopKScore", "Threshold",
    "Factor", "Confident", "Dilated", "RunningConfidenceRemasking", "POLICIES", "get_policy",
    "policy_names",
    "BlockPolicy", "WholeCanvas", "FixedBlocks", "AdaptiveBlocks", "get_block_policy",
    "LogitsEvaluator", "CACHE_MODES", "guided", "Template", "EnergyReweighting",
    "ARPrefixEnergy", "ar_prefix_energy", "ARCompletedReweighting",
    "LikelihoodTilt", "posterior_smc", "weighted_marginals", "marginal_tv", "clamped_canvas",
    "rao_blackwell_marginals", "SumPotential", "value_covariance", "posterior_gibbs",
    "QuantizedExpectation", "AnchoredRemasking", "aps_sample", "channel_codebook", "sum_codebook",
    "restore", "RESTORE_METHODS", "channel_likelihood", "corrupt", "character_error_rate",
    "Conditioned", "back_and_refine", "leave_one_out_confidence", "RefineResult",
]
