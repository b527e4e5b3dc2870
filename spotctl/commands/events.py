"""`spotctl put-events` and `spotctl invoke`: deliver any event to the offline stack (the counterpart of
`sam local invoke`, without Docker)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    put = subparsers.add_parser("put-events", help="put events on the offline stack's default bus")
    put.add_argument("file", type=Path, help="one event or a JSON list of events")
    put.add_argument("--json", type=Path, help="write the deliveries here")
    put.set_defaults(func=put_events)
    invoke = subparsers.add_parser("invoke", help="run one handler offline with an event")
    invoke.add_argument("function", help="logical id in template.yaml, e.g. SpotInterruptionFunction")
    invoke.add_argument("-e", "--event", type=Path, required=True)
    invoke.set_defaults(func=invoke_function)


def _load(path: Path) -> Any:
    from spotctl.cli import ToolError

    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ToolError(f"{path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ToolError(f"{path}: not JSON: {exc}") from exc


def put_events(args: argparse.Namespace) -> int:
    from spotctl.cli import ToolError
    from spotctl.offline.runtime import OfflineControlPlane

    events = _load(args.file)
    events = events if isinstance(events, list) else [events]
    if not all(isinstance(e, dict) and "source" in e and "detail-type" in e for e in events):
        raise ToolError(f"{args.file}: every event needs at least source and detail-type")
    with OfflineControlPlane() as plane:
        deliveries = [d.to_dict() for event in events for d in plane.put_event(event)]
    for d in deliveries:
        print(f"{d['event_id']}  {d['rule']}  {d['status']}  {d['error']}")
    if not deliveries:
        print("no rule matched")
    if args.json:
        args.json.write_text(json.dumps({"deliveries": deliveries}, indent=2))
    return 0


def invoke_function(args: argparse.Namespace) -> int:
    from spotctl.cli import ToolError
    from spotctl.offline.runtime import OfflineControlPlane

    event = _load(args.event)
    with OfflineControlPlane() as plane:
        if (
            args.function not in plane.stack.resources
            or plane.stack.resources[args.function]["type"] != "AWS::Lambda::Function"
        ):
            names = sorted(k for k, v in plane.stack.resources.items() if v["type"] == "AWS::Lambda::Function")
            raise ToolError(f"no function {args.function!r}; functions: {', '.join(names)}")
        result, errored = plane.invoke(args.function, event)
    print(json.dumps(result, indent=2, default=str))
    return 1 if errored else 0
