"""The error a job reports as bad input, in a module of its own: what reads inputs and settings raises it, and what
runs the job (the entry point) reports it."""

from __future__ import annotations


class InputError(Exception):
    """The input or configuration cannot be used: an application error, not a reason to resubmit."""
