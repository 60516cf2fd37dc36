"""Optimizers for the harness: Caffe-style SGD and the Optax optimizers by name.

Caffe's SGD puts the learning rate inside the momentum buffer,

    v = momentum * v + lr * lr_mult * (grad + weight_decay * decay_mult * w),   w -= v,

while Optax's (and PyTorch's) SGD applies the rate after the momentum. The two differ
whenever the rate changes every step, as it does with CLR, so the paper's runs use
`caffe_sgd`, composed from Optax transformations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from clr_jax import _validation as v

__all__ = ["OPTIMIZERS", "caffe_sgd", "eval_params", "make_optimizer", "multipliers_for"]

Multipliers = Any  # a pytree of (lr_mult, decay_mult) pairs shaped like the params


def _path_names(path) -> tuple[str, ...]:
    names = []
    for entry in path:
        name = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
        names.append(str(name))
    return tuple(names)


def multipliers_for(params: Any, table: dict[tuple[str, str], tuple[float, float]] | None):
    """A pytree of (lr_mult, decay_mult) for ``params`` from a table keyed by the last
    two names of each parameter's path, e.g. ``("ip1", "kernel")``; others get (1, 1)."""
    table = table or {}

    def lookup(path, _):
        names = _path_names(path)
        names = tuple(n for n in names if n != "value")
        return table.get(tuple(names[-2:]), (1.0, 1.0))

    return jax.tree_util.tree_map_with_path(lookup, params)


def _check(momentum, weight_decay) -> None:
    v.check("momentum", momentum, lambda m: (m >= 0) & (m < 1), "in [0, 1)")
    v.finite_nonnegative("weight_decay", weight_decay)


def _per_parameter(weight_decay: float, multipliers: Multipliers | None):
    """grad -> lr_mult * (grad + weight_decay * decay_mult * w), one label per pair."""
    if multipliers is None:
        concrete = v.concrete(weight_decay)
        if concrete is not None and not concrete.any():  # a traced one may be nonzero
            return optax.identity()
        return optax.add_decayed_weights(weight_decay)
    pairs = sorted({tuple(map(float, m)) for m in jax.tree.leaves(
        multipliers, is_leaf=lambda x: isinstance(x, tuple))})
    labels = jax.tree.map(lambda m: f"lr{float(m[0])}_wd{float(m[1])}", multipliers,
                          is_leaf=lambda x: isinstance(x, tuple))
    transforms = {
        f"lr{lm}_wd{dm}": optax.chain(optax.add_decayed_weights(weight_decay * dm),
                                      optax.scale(lm))
        for lm, dm in pairs
    }
    return optax.multi_transform(transforms, labels)


def caffe_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    multipliers: Multipliers | None = None,
) -> optax.GradientTransformation:
    """Caffe's SGD: the learning rate is applied before the momentum buffer.

    Args:
      learning_rate: a float or an Optax schedule.
      momentum: the momentum ``m`` in ``v = m v + lr * ...``.
      weight_decay: the L2 coefficient added to the gradient.
      multipliers: a pytree of ``(lr_mult, decay_mult)`` pairs shaped like the params
        (see `multipliers_for`); None means (1, 1) everywhere.

    Returns:
      The optimizer, as an ``optax.chain``.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = caffe_sgd(lambda t: 0.1 * (t + 1), momentum=0.5)
      >>> state = tx.init(jnp.zeros(()))
      >>> u1, state = tx.update(jnp.ones(()), state)   # v1 = 0.1
      >>> u2, state = tx.update(jnp.ones(()), state)   # v2 = 0.5 * 0.1 + 0.2
      >>> round(float(u1), 6), round(float(u2), 6)
      (-0.1, -0.25)
    """
    _check(momentum, weight_decay)
    rate = (optax.scale_by_schedule(learning_rate) if callable(learning_rate)
            else optax.scale(learning_rate))
    return optax.chain(_per_parameter(weight_decay, multipliers), rate,
                       optax.trace(decay=momentum), optax.scale(-1.0))


_OPTAX: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": lambda lr, momentum: optax.sgd(lr),
    "momentum": lambda lr, momentum: optax.sgd(lr, momentum=momentum),
    "nesterov": lambda lr, momentum: optax.sgd(lr, momentum=momentum, nesterov=True),
    "adam": lambda lr, momentum: optax.adam(lr),
    "rmsprop": lambda lr, momentum: optax.rmsprop(lr),
    "adagrad": lambda lr, momentum: optax.adagrad(lr),
    "adadelta": lambda lr, momentum: optax.adadelta(lr),
    # schedule-free SGD (Defazio et al. 2024): its rate is a constant, or a warm-up then
    # a constant; evaluate at `eval_params`, its averaged point
    "schedule_free_sgd": lambda lr, momentum: optax.contrib.schedule_free_sgd(lr, b1=momentum),
}
OPTIMIZERS = ("caffe_sgd", *_OPTAX)


def make_optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    multipliers: Multipliers | None = None,
) -> optax.GradientTransformation:
    """An optimizer by name, with Caffe-style weight decay and per-parameter multipliers.

    ``caffe_sgd`` is `caffe_sgd`; the others are Optax's, preceded by
    ``lr_mult * (grad + weight_decay * decay_mult * w)`` (how Caffe regularises every
    solver; for adaptive methods the lr multiplier scales the gradient they see).

    Raises:
      ValueError: on an unknown name or a bad momentum / weight decay.
    """
    v.choice("optimizer", name, OPTIMIZERS)
    if name == "caffe_sgd":
        return caffe_sgd(learning_rate, momentum=momentum, weight_decay=weight_decay,
                         multipliers=multipliers)
    _check(momentum, weight_decay)
    return optax.chain(_per_parameter(weight_decay, multipliers),
                       _OPTAX[name](learning_rate, momentum))


def eval_params(opt_state: Any, params: Any) -> Any:
    """The parameters to evaluate: for schedule-free optimizers their averaged point
    (``optax.contrib.schedule_free_eval_params``, found anywhere in ``opt_state``, e.g.
    after the weight-decay transform of `make_optimizer`), else ``params``."""
    found = [s for s in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.contrib.ScheduleFreeState))
        if isinstance(s, optax.contrib.ScheduleFreeState)]
    if not found:
        return params
    return optax.contrib.schedule_free_eval_params(found[0], params)
