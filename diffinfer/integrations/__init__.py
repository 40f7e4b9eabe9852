"""Optional adapters for diffusers and transformers models (extras: pip install diffinfer[hf])."""
