"""The sample events in events/ (the same files `sam local invoke -e` and `spotctl invoke -e` take), for every
test: `from sample_events import load_event` (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

EVENTS_DIR = Path(__file__).resolve().parents[1] / "events"


@cache
def _read_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / f"{name}.json").read_text())  # type: ignore[no-any-return]


def load_event(name: str, **detail_changes: Any) -> dict[str, Any]:
    """A fresh copy of events/<name>.json, with top-level detail keys replaced."""
    event = copy.deepcopy(_read_event(name))
    event["detail"].update(detail_changes)
    return event
