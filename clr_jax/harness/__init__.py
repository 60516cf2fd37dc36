"""The Flax training harness: data, models and training loops (needs the harness extra)."""
