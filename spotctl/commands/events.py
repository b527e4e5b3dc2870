"""`spotctl put-events` and `spotctl invoke`: deliver any event to the offline stack (the counterpart of
`sam local invoke`, without Docker)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError
from spotctl.files import check_output, read_json, write_text

# What a function is in template.yaml (SAM's, or a plain one), as `invoke` takes it.
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    put = subparsers.add_parser(
        "put-events",
        help="put events on the offline stack's default bus",
        description="Puts events on a freshly deployed offline stack's default bus; the template's rules decide "
        "which handlers run. Rules match only the stack's own names (job queues, bucket): to run a handler on "
        "a sample event whatever its names, use `spotctl invoke`. An event PutEvents refuses (no source, "
        "detail-type or detail, a source or detail-type that is not a non-empty string, a detail that is not an "
        "object, resources that are not a list of strings) is reported as a failed entry, as PutEvents answers it, "
        "and reaches no rule; the command then exits 1. An event over PutEvents' 256 KB is refused with the whole "
        "file (exit 2), as PutEvents refuses the request.",
    )
    put.add_argument("file", type=Path, help="one event or a JSON list of events")
    put.add_argument("--json", type=Path, help="write the deliveries (and the failed entries) here")
    put.set_defaults(func=put_events)
    invoke = subparsers.add_parser("invoke", help="run one handler offline with an event")
    invoke.add_argument("function", help="logical id in template.yaml, e.g. SpotInterruptionFunction")
    invoke.add_argument(
        "-e",
        "--event",
        type=Path,
        required=True,
        metavar="FILE",
        help="JSON file of the event to invoke the function with (required: there is no default event), "
        "e.g. events/spot_interruption_warning.json",
    )
    invoke.set_defaults(func=invoke_function)


def _why_unmatched(event: dict[str, Any], near_misses: dict[str, list[str]]) -> str:
    """A line saying that an event reached no rule, and what the rules that take its type also match on."""
    head = f"event {event.get('id', '?')} ({event['source']} / {event['detail-type']}) matched no rule of the stack"
    if not near_misses:
        return f"{head}: no rule takes this source and detail-type"
    fields = sorted({field for paths in near_misses.values() for field in paths})
    return (
        f"{head}: {', '.join(sorted(near_misses))} takes this type only with {', '.join(fields)} naming the stack's "
        "own resources, and the event's names are not the stack's (sample events are not); "
        "`spotctl invoke FUNCTION -e FILE` runs a handler on it whatever its names"
    )


def put_events(args: argparse.Namespace) -> int:
    from spotctl.offline.eventbus import RejectedEntry, check_entry, check_entry_size
    from spotctl.offline.runtime import OfflineControlPlane

    if args.json:
        check_output(args.json, "--json", reads={"the events file": args.file})
    events = read_json(args.file)
    events = events if isinstance(events, list) else [events]
    if not events:
        raise ToolError(f"{args.file}: no events (the list is empty)")
    for index, event in enumerate(events):
        # An entry that is not an object is no PutEvents entry at all (the call itself is refused); one missing a
        # field PutEvents requires is a failed entry, below.
        if not isinstance(event, dict):
            raise ToolError(
                f"{args.file}: event [{index}] is not an event: a JSON object with source, detail-type and detail"
            )
    # Entries PutEvents refuses (no detail, a source that is not a string, a detail that is not an object): it answers
    # each as a failed entry, with an ErrorCode and an ErrorMessage, and puts the others. They are told apart before
    # the stack is deployed, so a file of refused entries only is answered without the seconds a deployment takes.
    failed_entries, accepted = [], []
    for index, event in enumerate(events):
        try:
            check_entry(event)
        except RejectedEntry as exc:
            failed_entries.append({"entry": index, "error_code": exc.code, "error_message": exc.message})
            continue
        try:
            check_entry_size(event)
        except ValueError as exc:
            # Not a failed entry: PutEvents refuses the whole request (a ValidationException) and puts no event.
            raise ToolError(
                f"{args.file}: event [{index}] is {exc}; PutEvents refuses the request: no event was put"
            ) from None
        accepted.append(event)
    deliveries = []
    if accepted:
        with OfflineControlPlane() as plane:
            for event in accepted:
                delivered = [d.to_dict() for d in plane.put_event(event)]
                if not delivered:
                    print(f"spotctl put-events: {_why_unmatched(event, plane.bus.near_misses(event))}", file=sys.stderr)
                deliveries += delivered
    if args.json:
        # Before the deliveries are printed: a reader of stdout that has gone (`| head -1`) stops the command at its
        # first print, and must not leave an earlier file where this one was asked for.
        write_text(args.json, json.dumps({"deliveries": deliveries, "failed_entries": failed_entries}, indent=2))
    for d in deliveries:
        print(f"{d['event_id']}  {d['rule']}  {d['status']}  {d['error']}")
    for entry in failed_entries:
        print(f"event [{entry['entry']}]  failed entry  {entry['error_code']}: {entry['error_message']}")
    if not deliveries and len(failed_entries) < len(events):
        print("no rule matched")
    failed = sum(d["status"] != "ok" for d in deliveries)
    if failed:
        # As `invoke` fails when its handler does: the events were put, but not every handler took them.
        print(f"spotctl put-events: {failed} of {len(deliveries)} deliveries failed (see above)", file=sys.stderr)
    if failed_entries:
        print(
            f"spotctl put-events: {len(failed_entries)} of {len(events)} events were not put: PutEvents refuses them "
            "as failed entries (see above)",
            file=sys.stderr,
        )
    return 1 if failed or failed_entries else 0


def invoke_function(args: argparse.Namespace) -> int:
    from spotctl.offline.runtime import DEFAULT_TEMPLATE, OfflineControlPlane
    from spotctl.offline.stack import TemplateError, load_template

    # The name is looked up in the template, not in the deployed stack: a name that is not there is told at once,
    # not after the seconds a deployment takes.
    try:
        resources = load_template(DEFAULT_TEMPLATE)["Resources"]
    except TemplateError as exc:
        raise ToolError(str(exc)) from exc
    names = sorted(
        logical_id
        for logical_id, resource in resources.items()
        if isinstance(resource, dict) and resource.get("Type") in FUNCTION_TYPES
    )
    if args.function not in names:
        raise ToolError(f"no function {args.function!r} in {DEFAULT_TEMPLATE.name}; functions: {', '.join(names)}")
    event = read_json(args.event)
    with OfflineControlPlane() as plane:
        result, errored = plane.invoke(args.function, event)
    print(json.dumps(result, indent=2, default=str))
    return 1 if errored else 0
