"""How every refused input is described: one wording for pydantic's findings, wherever they are reported."""

from __future__ import annotations

from pydantic import ValidationError

# Problems named in one description: an input of thousands of bad fields (a manifest's 64 KiB of them) would otherwise
# be described in hundreds of KB, more than a notice (SNS takes 256 KB) or a ledger item (400 KB) holds.
MAX_PROBLEMS_NAMED = 50


def describe_validation_error(exc: ValidationError, whole: str) -> str:
    """The problems found, as `field.path: message`, joined by '; '; `whole` names a problem with the whole input.
    Past the first `MAX_PROBLEMS_NAMED`, how many more there are.

    Pydantic's messages name the expectation, not the value, so nothing secret from the input is repeated."""
    errors = exc.errors()
    named = [f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in errors[:MAX_PROBLEMS_NAMED]]
    more = len(errors) - len(named)
    return "; ".join(named + ([f"and {more} more"] if more else []))
