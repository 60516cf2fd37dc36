"""Test settings shared by the test suite and the doctests.

Rank promotion raises, so a silent broadcast in library code fails a test. Strict
dtype promotion is switched on per test module where only clr_jax code runs (Optax's
own Adam is not strict-clean).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
