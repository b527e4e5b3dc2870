"""What the example jobs take from a CSV, in one place for every stage that reads one: which column of the header
is which, and a number in a field; and the plain ASCII whole number the runtime reads wherever it takes one (a
setting, the attempt a checkpoint request is for)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .errors import InputError

# An optional sign, digits with an optional fraction (or a fraction alone), an optional exponent: ASCII only, as
# spreadsheets export numbers and as ``repr(float)`` writes them. Python's float() takes more, none of it a CSV
# number: underscores between digits (``1_0``), the digits of any script (Arabic-Indic, fullwidth, ...), any
# Unicode whitespace around (a no-break space, an ideographic space, a line feed in a quoted field), and ``inf`` /
# ``nan`` / ``infinity`` in any case.
_CSV_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
BLANKS = " \t"  # what may surround a number in its field, as in "a, 0.5, 0.5, 2"


def csv_number(field: str) -> float:
    """The number a CSV field holds: plain ASCII decimal (``5``, ``-0.25``, ``.5``, ``1e-3``), spaces and tabs around
    it ignored, and finite; a :class:`ValueError` for anything else, as float() raises for what it refuses."""
    text = field.strip(BLANKS)
    if not _CSV_NUMBER.fullmatch(text):
        raise ValueError(f"not a plain decimal number: {field!r}")
    number = float(text)
    if not math.isfinite(number):  # e.g. 1e999: beyond the largest float
        raise ValueError(f"not a finite number: {field!r}")
    return number


def ascii_digits(text: object) -> bool:
    """Whether ``text`` is a string of ASCII digits alone: the one rule for a whole number written as ``str(n)`` and
    read back (str.isdigit() also takes ``²``, which int() refuses; int() also takes ``1_0``, the digits of any script,
    a sign and whitespace around)."""
    return isinstance(text, str) and text.isascii() and text.isdigit()


def ascii_whole_number(text: str) -> int:
    """The whole number ``text`` holds in ASCII digits alone (:func:`ascii_digits`); a :class:`ValueError` for anything
    else, as int() raises for what it refuses."""
    if not ascii_digits(text):
        raise ValueError(f"not ASCII digits: {text!r}")
    return int(text)


def column_positions(header: Sequence[str], columns: Sequence[str], what: str) -> list[int]:
    """Where each of ``columns`` is in the ``header`` of the CSV ``what`` names (case and surrounding spaces of a name
    ignored); an :class:`InputError` if one is missing or named more than once (which of two x_m holds the position is
    anybody's guess). Other columns are the caller's to drop, so they may repeat."""
    names = [name.strip().lower() for name in header]
    missing = [column for column in columns if column not in names]
    if missing:
        raise InputError(f"{what} has no column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    repeated = {
        column: [number for number, name in enumerate(names, start=1) if name == column]
        for column in columns
        if names.count(column) > 1
    }
    if repeated:
        where = "; ".join(f"{column} (columns {', '.join(map(str, numbers))})" for column, numbers in repeated.items())
        raise InputError(f"{what} header names a column more than once: {where}; name each column once")
    return [names.index(column) for column in columns]
