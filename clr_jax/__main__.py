"""``python -m clr_jax`` runs the ``clr-jax`` command line."""

from clr_jax.cli import main_entry

main_entry()
