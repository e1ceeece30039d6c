"""Argument checks shared by the whole package: ints, per-dimension int tuples, numbers, choices.

Every check takes the value, the argument's ``name`` and a ``context`` (the
layer, op, function or command that received it), returns the value in its
normal form, and otherwise raises an error that names all three::

    >>> integer(0, "features", context="Conv", minimum=1)
    ValueError: Conv: features must be an int >= 1, got 0

``bool`` is never accepted where an int or a number is asked for (``True``
is an ``int`` to Python, never a kernel size to a user); NumPy integers are.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["is_int", "integer", "int_tuple", "number", "boolean", "choice", "exactly_one"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or NumPy) and not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _bounds(minimum: Any, maximum: Any, exclusive_minimum: bool = False,
            exclusive_maximum: bool = False) -> str:
    """`` >= 0 and < 1``: the bounds a value must meet, for a message."""
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive_minimum else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"{'<' if exclusive_maximum else '<='} {maximum}")
    return " " + " and ".join(parts) if parts else ""


def integer(value: Any, name: str, *, context: str, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """``value`` as an ``int`` within ``[minimum, maximum]`` (either bound may be ``None``).

    Raises:
      ValueError: ``{context}: {name} must be an int >= 1, got 0``.
    """
    if (not is_int(value) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        raise ValueError(f"{context}: {name} must be an int{_bounds(minimum, maximum)}, got {value!r}")
    return int(value)


def int_tuple(value: Any, name: str, *, context: str, length: int | None = None,
              minimum: int | None = None) -> tuple[int, ...]:
    """An int or a sequence of ints, as a tuple of ints each ``>= minimum``.

    An int is repeated ``length`` times (once when ``length`` is ``None``); a
    sequence must have ``length`` entries when ``length`` is given (one per
    spatial dimension, say) and at least one otherwise.

    Raises:
      ValueError: ``{context}: {name} must be an int or a sequence of 2 ints
        >= 1, got (3, 0)``.
    """
    if is_int(value):
        out = (int(value),) * (1 if length is None else length)
    elif isinstance(value, Sequence) and not isinstance(value, str) and all(map(is_int, value)):
        out = tuple(int(v) for v in value)
    else:
        out = None
    if (out is None or not out or (length is not None and len(out) != length)
            or (minimum is not None and min(out) < minimum)):
        count = "ints" if length is None else f"{length} ints"
        raise ValueError(f"{context}: {name} must be an int or a sequence of {count}"
                         f"{_bounds(minimum, None)}, got {value!r}")
    return out


def number(value: Any, name: str, *, context: str, minimum: float | None = None,
           maximum: float | None = None, exclusive_minimum: bool = False,
           exclusive_maximum: bool = False) -> float:
    """``value`` as a finite-or-infinite real ``float`` within the given bounds.

    ``exclusive_minimum``/``exclusive_maximum`` make the bounds strict
    (``0 < rate`` rather than ``0 <= rate``). NaN is always rejected.

    Raises:
      ValueError: ``{context}: {name} must be a number >= 0 and < 1, got 1.5``.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if exclusive_maximum else value <= maximum
    if not ok:
        bounds = _bounds(minimum, maximum, exclusive_minimum, exclusive_maximum)
        raise ValueError(f"{context}: {name} must be a number{bounds}, got {value!r}")
    return float(value)


def boolean(value: Any, name: str, *, context: str) -> bool:
    """``value`` if it is a ``bool`` (``True``/``False``, not ``1``/``0`` or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{context}: {name} must be True or False, got {value!r}")
    return value


def choice(value: Any, name: str, choices: Iterable[Any], *, context: str) -> Any:
    """``value`` if it is one of ``choices``.

    Raises:
      ValueError: ``{context}: unknown {name} 'maxx'; expected one of ('max', 'avg')``.
    """
    choices = tuple(choices)
    try:
        known = value in choices
    except TypeError:  # an unhashable value in a set/dict-derived tuple
        known = False
    if not known:
        raise ValueError(f"{context}: unknown {name} {value!r}; expected one of {choices}")
    return value


def exactly_one(*, context: str, **options: Any) -> str:
    """The name of the one option that is not ``None``.

    Raises:
      ValueError: ``{context}: give exactly one of size and scale_factor, got
        size=None and scale_factor=None``.
    """
    given = [name for name, value in options.items() if value is not None]
    if len(given) != 1:
        names = " and ".join(options)
        values = " and ".join(f"{name}={value!r}" for name, value in options.items())
        raise ValueError(f"{context}: give exactly one of {names}, got {values}")
    return given[0]
