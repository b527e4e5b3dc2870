"""How every refused input is described: one wording for pydantic's findings, wherever they are reported."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(exc: ValidationError, whole: str) -> str:
    """Every problem found, as `field.path: message`, joined by '; '; `whole` names a problem with the whole input.

    Pydantic's messages name the expectation, not the value, so nothing secret from the input is repeated."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in exc.errors())
