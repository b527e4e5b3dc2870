"""Block Kit messages for the six notification kinds, the plain-text line, and the dedupe key."""

from __future__ import annotations

import json

import pytest
from spot_hpc.cost import savings_pct
from spot_hpc.slack import (
    FIELD_TEXT_LIMIT,
    NOTIFICATION_KINDS,
    SECTION_TEXT_LIMIT,
    Notification,
    build_blocks,
    build_message,
    escape_mrkdwn,
    format_usd,
    notification_dedupe_key,
    notification_text,
    sns_subject,
)


def _field_texts(blocks: list[dict]) -> list[str]:
    return [field["text"] for block in blocks if block["type"] == "section" for field in block.get("fields", [])]


@pytest.mark.parametrize("kind", NOTIFICATION_KINDS)
def test_every_kind_shows_run_stage_reason_and_cost(kind: str) -> None:
    # GIVEN a notification of that kind about a stage, with the cost so far
    notification = Notification(kind=kind, run_id="run-42", stage="hpc", reason="the reason", cost_usd=12.5)  # type: ignore[arg-type]

    # WHEN its webhook message is built
    message = build_message(notification)

    # THEN it is valid-shaped Block Kit with a header, the reason, and run / stage / cost fields
    blocks = message["blocks"]
    assert blocks[0]["type"] == "header"
    assert blocks[0]["text"]["type"] == "plain_text"
    assert blocks[1]["text"]["text"] == "the reason"
    fields = _field_texts(blocks)
    assert "*Run*\nrun-42" in fields
    assert "*Stage*\nhpc" in fields
    assert any(text.startswith("*Cost") and "$12.50" in text for text in fields)
    assert "run-42" in message["text"]
    json.dumps(message)  # serialisable as sent


def test_titles_differ_per_kind() -> None:
    # GIVEN one notification per kind
    notifications = [Notification(kind=k, run_id="r", stage=None, reason="x") for k in NOTIFICATION_KINDS]  # type: ignore[arg-type]

    # WHEN their headers are built
    headers = {build_blocks(n)[0]["text"]["text"] for n in notifications}

    # THEN each kind has its own header
    assert len(headers) == len(NOTIFICATION_KINDS)


def test_a_notice_with_its_own_title_shows_it_in_the_header_the_text_and_the_sns_subject() -> None:
    # GIVEN an interruption notice titled for an On-Demand instance
    notification = Notification(
        kind="interrupted", run_id="r", stage="hpc", reason="x", title="On-Demand instance lost"
    )

    # WHEN its message parts are built
    header = build_blocks(notification)[0]["text"]["text"]

    # THEN each carries that title, with the kind's emoji
    assert header == ":warning: On-Demand instance lost"
    assert notification_text(notification).startswith("On-Demand instance lost: run r")
    assert "On-Demand instance lost" in sns_subject(notification)


def test_final_message_carries_cost_on_demand_and_savings() -> None:
    # GIVEN a succeeded run with its settled figures
    notification = Notification(
        kind="succeeded",
        run_id="run-1",
        stage=None,
        reason="all stages succeeded",
        cost_usd=4.0,
        on_demand_only_cost_usd=10.0,
        savings_pct=60.0,
        deadline_hours=12.0,
        deadline_met=True,
    )

    # WHEN the blocks and the text are built
    fields = _field_texts(build_blocks(notification))
    text = notification_text(notification)

    # THEN the final cost, the On-Demand-only cost, the savings and the deadline are shown; no stage is "—"
    assert "*Cost*\n$4.00" in fields
    assert "*On-Demand only*\n$10.00" in fields
    assert "*Savings*\n60.0%" in fields
    assert "*Deadline*\n12.00 h (met)" in fields
    assert "*Stage*\n—" in fields
    assert "saved 60.0%" in text and "cost $4.00" in text


def test_hostile_reason_is_escaped_and_truncated() -> None:
    # GIVEN a reason that tries to ping the channel and is far too long for Slack
    reason = "<!channel> <@U123> & " + "x" * 10_000
    notification = Notification(kind="failed", run_id="r<1>", stage="pre&process", reason=reason)

    # WHEN the message is built
    message = build_message(notification)

    # THEN Slack's control characters are escaped and every text fits Slack's limits
    section_text = message["blocks"][1]["text"]["text"]
    assert section_text.startswith("&lt;!channel&gt; &lt;@U123&gt; &amp; ")
    assert len(section_text) <= SECTION_TEXT_LIMIT
    assert "<!channel>" not in message["text"]
    assert all(len(text) <= FIELD_TEXT_LIMIT for text in _field_texts(message["blocks"]))
    assert "*Run*\nr&lt;1&gt;" in _field_texts(message["blocks"])


def test_many_details_are_spread_over_sections_of_at_most_ten_fields() -> None:
    # GIVEN a notification with many extra details
    details = {f"key{i}": f"value{i}" for i in range(15)}
    notification = Notification(kind="requeued", run_id="r", stage="hpc", reason="deadline", details=details)

    # WHEN the blocks are built
    blocks = build_blocks(notification)

    # THEN no section carries more than ten fields and every detail is shown
    assert all(len(block.get("fields", [])) <= 10 for block in blocks)
    assert sum(text.startswith("*key") for text in _field_texts(blocks)) == 15


def test_unknown_kind_is_rejected() -> None:
    # GIVEN / WHEN / THEN a kind outside the six is refused
    with pytest.raises(ValueError, match="unknown notification kind"):
        Notification(kind="exploded", run_id="r", stage=None, reason="x")  # type: ignore[arg-type]


def test_sns_subject_is_printable_ascii_within_limit() -> None:
    # GIVEN a run id with non-ASCII characters and great length
    notification = Notification(kind="started", run_id="ränd-" + "y" * 200, stage=None, reason="x")

    # WHEN the SNS subject is made
    subject = sns_subject(notification)

    # THEN SNS accepts it: at most 100 printable ASCII characters
    assert len(subject) <= 100
    assert all(32 <= ord(c) < 127 for c in subject)


def test_notification_round_trips_through_its_dict() -> None:
    # GIVEN a notification with details
    notification = Notification(kind="interrupted", run_id="r", stage="hpc", reason="x", attempt=2, details={"a": "b"})

    # WHEN it goes to JSON and back (as on the dead-letter queue)
    restored = Notification.from_dict(json.loads(json.dumps(notification.to_dict())))

    # THEN it is the same notification
    assert restored == notification


def test_dedupe_key_is_deterministic_and_separates_events() -> None:
    # GIVEN the same event twice and events differing in one part each
    key = notification_dedupe_key("run-1", "hpc", "interrupted", 1)
    variants = [
        notification_dedupe_key("run-2", "hpc", "interrupted", 1),
        notification_dedupe_key("run-1", "postprocess", "interrupted", 1),
        notification_dedupe_key("run-1", "hpc", "requeued", 1),
        notification_dedupe_key("run-1", "hpc", "interrupted", 2),
        notification_dedupe_key("run-1", None, "interrupted", 1),
        notification_dedupe_key("run-1", "None", "interrupted", 1),
        notification_dedupe_key("run-1#hpc", None, "interrupted", 1),
    ]

    # WHEN / THEN the same event gives the same key and every other event a different one
    assert notification_dedupe_key("run-1", "hpc", "interrupted", 1) == key
    assert len({key, *variants}) == len(variants) + 1
    assert Notification(kind="interrupted", run_id="run-1", stage="hpc", reason="x", attempt=1).dedupe_key == key


def test_money_is_formatted_for_people() -> None:
    # GIVEN / WHEN / THEN dollars show to the cent, small amounts finer, negatives with the sign first
    from spot_hpc.slack import format_usd

    assert format_usd(1234.5) == "$1,234.50"
    assert format_usd(0.0102) == "$0.0102"
    assert format_usd(0) == "$0.00"
    assert format_usd(-2.5) == "-$2.50"


def test_truncation_never_cuts_an_escaped_character_in_half() -> None:
    # GIVEN a reason (e.g. an S3 key) full of characters Slack needs escaped, far longer than a section holds
    notification = Notification(kind="failed", run_id="r", stage=None, reason="a&<b>" * 2_000)

    # WHEN the message is built
    message = build_message(notification)

    # THEN the texts fit Slack's limits and end in a whole entity (no "&am" shown to the channel) then the ellipsis
    for text in (message["blocks"][1]["text"]["text"], message["text"]):
        assert len(text) <= SECTION_TEXT_LIMIT and text.endswith("…")
        body = text[:-1]
        assert body.endswith(("a", "&amp;", "&lt;", "b", "&gt;")), body[-8:]


def test_a_run_that_cost_more_than_on_demand_says_so_in_words() -> None:
    # GIVEN a run that cost more than On-Demand alone would have
    notification = Notification(kind="succeeded", run_id="r", stage=None, reason="done", cost_usd=12.0,
                                on_demand_only_cost_usd=10.0, savings_pct=-20.0)  # fmt: skip

    # WHEN its text and fields are built
    text = notification_text(notification)
    fields = _field_texts(build_blocks(notification))

    # THEN it says it cost 20% more, not that it "saved -20%"
    assert "saved -" not in text and "cost 20.0% more than On-Demand only" in text
    assert "*Savings*\nnone: 20.0% more than On-Demand" in fields


def test_s3_keys_with_slack_control_characters_are_escaped_everywhere() -> None:
    # GIVEN a notification about an upload whose key holds &, < and > (a user's own file name)
    key = "incoming/<!here> & co>.csv"
    notification = Notification(kind="failed", run_id="r", stage=None, reason=f"upload rejected: {key}",
                                details={"source": f"s3://bucket/{key}"})  # fmt: skip

    # WHEN the message is built
    message = build_message(notification)

    # THEN no raw control character reaches Slack in any text of the message
    texts = [message["text"], message["blocks"][1]["text"]["text"], *_field_texts(message["blocks"])]
    assert all("<" not in text and ">" not in text for text in texts)
    assert any("&lt;!here&gt; &amp; co&gt;.csv" in text for text in texts)


@pytest.mark.parametrize(
    ("savings", "said", "field"),
    [(-0.04, "cost <0.1% more than On-Demand only", "none: <0.1% more than On-Demand"),
     (0.04, "saved under 0.1%", "under 0.1%"),
     (99.96, "saved >99.9%", ">99.9%"),
     (0.0, "saved 0.0%", "0.0%"),
     (-0.05, "cost 0.1% more than On-Demand only", "none: 0.1% more than On-Demand"),
     (savings_pct(100.004, 100.0), "cost <0.1% more than On-Demand only", "none: <0.1% more than On-Demand"),
     (savings_pct(0.004, 100.0), "saved >99.9%", ">99.9%")],
)  # fmt: skip
def test_savings_at_the_ends_are_not_rounded_into_a_wrong_figure(savings: float, said: str, field: str) -> None:
    # GIVEN a run whose savings round to 0.0% or 100.0% (a tiny loss, a tiny saving, almost all saved)
    notification = Notification(kind="succeeded", run_id="r", stage=None, reason="done", cost_usd=1.0,
                                on_demand_only_cost_usd=1.0, savings_pct=savings)  # fmt: skip

    # WHEN its text and fields are built
    text = notification_text(notification)
    blocks = build_blocks(notification)

    # THEN it says which side of zero or a hundred the run is, never "0.0% more" or "saved 100.0%"
    assert said in text
    # AND the field is escaped for Slack (a bare ">" starting a line would quote it)
    assert f"*Savings*\n{escape_mrkdwn(field)}" in _field_texts(blocks)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.999996, "$1.00"), (0.99994, "$0.9999"), (0.00004, "<$0.0001"), (0.00009, "<$0.0001"),
     (0.0001, "$0.0001"), (1.0, "$1.00")],
)  # fmt: skip
def test_money_is_rounded_before_its_format_is_chosen(value: float, shown: str) -> None:
    # GIVEN an amount just under a dollar, or under a hundredth of a cent
    # WHEN / THEN it shows as it rounds: "$1.00", not "$1.0000"; a tiny amount as "<$0.0001", not "$0.0000"
    assert format_usd(value) == shown


@pytest.mark.parametrize(
    ("elapsed", "shown"),
    [(6.0028, "6.01 h"), (6.0, "6.00 h"), (5.9972, "6.00 h"), (5.991, "5.99 h"), (6.0149, "6.01 h"), (7.5, "7.50 h")],
)  # fmt: skip
def test_hours_past_the_deadline_are_never_rounded_down_onto_it(elapsed: float, shown: str) -> None:
    # GIVEN a notice of a 6 h deadline at some hours since the run started
    notification = Notification(kind="sla_at_risk", run_id="r", stage="hpc", reason="x", deadline_hours=6.0,
                                elapsed_hours=elapsed)  # fmt: skip

    # WHEN / THEN hours past the deadline show past it ("6.01 h", not "6.00 h"); the others as they round
    assert f"*Elapsed*\n{shown}" in _field_texts(build_blocks(notification))
