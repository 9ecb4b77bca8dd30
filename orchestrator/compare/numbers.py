"""Numbers as a person reads them: with the digits that tell two values apart, no more.

`0.9755555555555555` vs `0.9688888888888889` reads as `0.97556` vs `0.96889`, delta `-0.00667`:
at least five significant digits, more only where the two would otherwise print alike. JSON
reports keep full precision; every other format and every sentence of a comparison use these.
"""
from __future__ import annotations

import math

LEAST_DIGITS = 5
_MOST_DIGITS = 17            # enough for any float to read back as itself


def _decimals(scale: float, digits: int) -> int:
    return max(digits - 1 - math.floor(math.log10(scale)), 0) if scale > 0 else digits - 1


def _fixed(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


def _plain_scale(x: float) -> bool:
    return x == 0 or 1e-4 <= abs(x) < 1e9


def _special(x: float) -> str | None:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return None


def _exact_decimals(a: float, b: float) -> int | None:
    """The fewest decimals at which both finite values print as exactly themselves."""
    for decimals in range(0, 8):
        if all(not math.isfinite(x) or float(f"{x:.{decimals}f}") == x for x in (a, b)):
            return decimals
    return None


def tell_apart(a: float, b: float) -> tuple[str, str]:
    """Both values, each with the fewest digits (at least five significant) that keep them
    apart when they differ; integers as integers."""
    sa, sb = _special(a), _special(b)
    if sa is not None and sb is not None:
        return sa, sb
    finite = [abs(x) for x in (a, b) if math.isfinite(x)]
    scale = max(finite, default=0.0)
    if not all(_plain_scale(x) for x in finite):
        for digits in range(LEAST_DIGITS, _MOST_DIGITS + 1):
            ta, tb = (s or f"{x:.{digits - 1}e}" for s, x in ((sa, a), (sb, b)))
            if ta != tb or a == b:
                return ta, tb
        return sa or repr(a), sb or repr(b)
    exact = _exact_decimals(a, b)
    for digits in range(LEAST_DIGITS, _MOST_DIGITS + 1):
        decimals = _decimals(scale, digits)
        if exact is not None and exact <= decimals:
            decimals = exact        # 0.95 vs 0.9 reads as 0.95 vs 0.90, not 0.95000 vs 0.90000
        ta, tb = (s or _fixed(x, decimals) for s, x in ((sa, a), (sb, b)))
        if ta != tb or a == b:
            return ta, tb
    return sa or repr(a), sb or repr(b)


def shown(x: float | None) -> str:
    """One value alone, at five significant digits (integers as integers)."""
    if x is None:
        return "—"
    return tell_apart(x, x)[0]


def delta_shown(delta: float | None, a: float | None = None, b: float | None = None) -> str:
    """A difference with as many decimals as the values it is the difference of."""
    if delta is None:
        return "—"
    if delta == 0:
        return "0"
    if math.isnan(delta):
        return "NaN"
    special = _special(delta)
    if special is not None and not float(delta).is_integer():
        return special if special.startswith("-") else "+" + special
    if a is not None and b is not None and all(map(math.isfinite, (a, b))):
        ta, _ = tell_apart(a, b)
        if "e" not in ta:
            decimals = len(ta.partition(".")[2])
            if abs(delta) >= 10 ** -decimals / 2:
                return f"{delta:+.{decimals}f}"
    text = tell_apart(delta, delta)[0]
    return text if text.startswith("-") else "+" + text


def metric_value_text(value: object) -> str:
    """Any metric value as one short cell: a number at five digits, JSON's words for booleans
    and null, a curve by its length and ends."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            return "curve of 0 values"
        return (f"curve of {len(value)} values ({shown(value[0])} … {shown(value[-1])})"
                if len(value) > 1 else f"curve of 1 value ({shown(value[0])})")
    return shown(float(value))
