"""Held-out check of discrete posterior sampling on sticky HMMs (issue 18): placeholder, filled in below."""
from __future__ import annotations

# Fixed BEFORE any run or look at these models (20:50 UTC, issue 18 second pass): the held-out HMM seeds
# and SMC streams. Settings are chosen on tuning seeds 100-109 only; these are measured once.
HELDOUT_SEEDS = tuple(range(300, 320))  # HMM seeds 300-319
HELDOUT_STREAMS = (0, 1, 2)  # SMC seeds (particle streams) per problem
TUNING_SEEDS = tuple(range(100, 110))  # where every setting was chosen
