"""Independent float64 reference formulas, written from the paper's text.

These follow ../shared/PAPER.md literally (cycle = floor(1 + t / 2s), x = |t/s - 2c + 1|)
and share no code with clr_jax, so a test comparing the two can fail.
"""

import math


def triangular(t, base, top, s):
    cycle = math.floor(1 + t / (2 * s))
    x = abs(t / s - 2 * cycle + 1)
    return base + (top - base) * max(0.0, 1 - x)


def triangular2(t, base, top, s):
    cycle = math.floor(1 + t / (2 * s))
    x = abs(t / s - 2 * cycle + 1)
    return base + (top - base) * max(0.0, 1 - x) / 2 ** (cycle - 1)


def asymmetric_scale(t, up, down):
    """PyTorch's CyclicLR scale factor for step_size_up / step_size_down."""
    total = up + down
    ratio = up / total
    cycle = math.floor(1 + t / total)
    x = 1 + t / total - cycle
    return (x / ratio if x <= ratio else (x - 1) / (ratio - 1)), cycle


def exp_range_amplitude(t, base, top, s, gamma):
    return base + (triangular(t, base, top, s) - base) * gamma**t


def exp_range_both(t, base, top, s, gamma):
    return gamma**t * triangular(t, base, top, s)


def one_cycle(t, top, total, pct=0.3, anneal="cos", div=25.0, final_div=1e4, three=False):
    """PyTorch OneCycleLR.get_lr, transcribed as arithmetic."""
    initial = top / div
    low = initial / final_div
    if three:
        phases = [(pct * total - 1, initial, top), (2 * pct * total - 2, top, initial),
                  (total - 1, initial, low)]
    else:
        phases = [(pct * total - 1, initial, top), (total - 1, top, low)]
    start = 0.0
    for i, (end, a, b) in enumerate(phases):
        if t <= end or i == len(phases) - 1:
            p = (t - start) / (end - start)
            if anneal == "cos":
                return b + (a - b) / 2 * (math.cos(math.pi * p) + 1)
            return (b - a) * p + a
        start = end
    raise AssertionError
