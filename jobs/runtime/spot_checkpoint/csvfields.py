"""What the example jobs take as a number in a CSV field, in one place for every stage that reads one."""

from __future__ import annotations

import math
import re

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
