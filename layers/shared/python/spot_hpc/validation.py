"""How every refused input is described: one wording for pydantic's findings, wherever they are reported; and the one
rule for a whole number read from text the control plane did not write itself (a tag, an id, an attribute)."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(exc: ValidationError, whole: str) -> str:
    """Every problem found, as `field.path: message`, joined by '; '; `whole` names a problem with the whole input.

    Pydantic's messages name the expectation, not the value, so nothing secret from the input is repeated."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in exc.errors())


def ascii_whole_number(text: object) -> int | None:
    """`text` as a whole number if it is a string of ASCII digits only; None otherwise.

    `str.isdigit()` also takes "²", which `int()` refuses, and `int()` takes "٣", " 3" and "1_0": neither alone is the
    rule for a number that the control plane wrote as `str(n)` and reads back from AWS."""
    if isinstance(text, str) and text.isascii() and text.isdigit():
        return int(text)
    return None
