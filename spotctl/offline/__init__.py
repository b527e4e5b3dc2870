"""The offline runtime: the real template, state machine and handlers on an embedded AWS (moto)."""
