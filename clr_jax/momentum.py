"""Scheduling the momentum of any Optax optimizer, next to its learning rate."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import optax

__all__ = ["with_cyclical_momentum"]

# The name each optimizer family gives its momentum: SGD-style optimizers call it
# "momentum", Adam-style ones call the first-moment decay "b1".
_MOMENTUM_NAMES = ("momentum", "b1")


def _momentum_name(optimizer: Callable[..., optax.GradientTransformation]) -> str:
    try:
        parameters = inspect.signature(optimizer).parameters
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"cannot read the arguments of optimizer {optimizer!r}; pass "
            "hyperparam='...' naming its momentum argument."
        ) from error
    for name in _MOMENTUM_NAMES:
        if name in parameters:
            return name
    raise ValueError(
        f"optimizer {getattr(optimizer, '__name__', optimizer)!r} has no 'momentum' or "
        "'b1' argument; pass hyperparam='...' naming the argument to schedule."
    )


def with_cyclical_momentum(
    optimizer: Callable[..., optax.GradientTransformation],
    *,
    learning_rate: optax.ScalarOrSchedule,
    momentum: optax.ScalarOrSchedule,
    hyperparam: str | None = None,
    **kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """Builds an Optax optimizer whose learning rate and momentum both follow schedules.

    A thin layer over ``optax.inject_hyperparams`` that finds the optimizer's momentum
    argument for you: ``momentum`` for ``optax.sgd`` (and any optimizer that names it
    so), ``b1`` for ``optax.adam``, ``optax.adamw``, ``optax.nadam``, ``optax.lamb``
    and the rest of the Adam family. The values used by the latest update are in the
    optimizer state, ``state.hyperparams["learning_rate"]`` and
    ``state.hyperparams[name]``.

    Args:
      optimizer: an Optax optimizer factory such as ``optax.sgd`` or ``optax.adam``
        (the function, not a built transformation).
      learning_rate: a float or a schedule (e.g. `clr_jax.triangular`).
      momentum: a float or a schedule (e.g. `clr_jax.cyclical_momentum`).
      hyperparam: the name of the momentum argument, when the optimizer calls it
        neither ``momentum`` nor ``b1``.
      **kwargs: other arguments of ``optimizer``, passed on unchanged.

    Returns:
      The optimizer, as ``optax.inject_hyperparams(optimizer)(...)`` returns it.

    Raises:
      ValueError: if the optimizer has no momentum argument and ``hyperparam`` is
        not given, or ``hyperparam`` is not one of its arguments.

    Examples:
      >>> import clr_jax, jax.numpy as jnp, optax
      >>> lr = clr_jax.triangular(0.1, 1.0, step_size=10)
      >>> mom = clr_jax.cyclical_momentum(0.85, 0.95, step_size=10)
      >>> tx = clr_jax.with_cyclical_momentum(optax.sgd, learning_rate=lr, momentum=mom)
      >>> state = tx.init(jnp.zeros(3))
      >>> for _ in range(11):  # the 11th update uses t = 10, the rate's peak
      ...     _, state = tx.update(jnp.ones(3), state)
      >>> round(float(state.hyperparams["learning_rate"]), 4)
      1.0
      >>> round(float(state.hyperparams["momentum"]), 4)
      0.85
    """
    name = hyperparam if hyperparam is not None else _momentum_name(optimizer)
    if hyperparam is not None:
        try:
            parameters = inspect.signature(optimizer).parameters
        except (TypeError, ValueError):
            parameters = None
        accepts_any = parameters is not None and any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
        )
        if parameters is not None and name not in parameters and not accepts_any:
            raise ValueError(
                f"hyperparam={name!r} is not an argument of optimizer "
                f"{getattr(optimizer, '__name__', optimizer)!r}; its arguments are "
                f"{', '.join(parameters)}."
            )
    if name in kwargs:
        raise ValueError(f"{name!r} is given twice: once as momentum and once in kwargs.")
    return optax.inject_hyperparams(optimizer)(
        learning_rate=learning_rate, **{name: momentum}, **kwargs
    )

