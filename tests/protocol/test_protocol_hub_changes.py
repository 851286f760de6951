"""Protocol version HUB_CHANGES_SINCE: the hub report carries what changed since the one
the laptop holds.

``PullRequest.hub_since`` names the server's hub mark of the report held; ``HubReport``
says the mark it brings the laptop to and whether its items are the whole list or the
changes since (where ``removed`` drops a patient). Anything else from the wire is a
RemoteProtocolError, and a peer of an older version neither sends nor gets them.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from tests.protocol.session import (
    ORG,
    SERVER_ID,
    enrolled_client,
    handshake,
    pump,
    sent_messages,
)

from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    HUB_CHANGES_SINCE,
    HUB_REMOVED,
    MIN_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    ClientProtocol,
    HubItem,
    HubReport,
    PullRequest,
    ServerProtocol,
    decode_frame,
    encode_frame,
)

OLDER = HUB_CHANGES_SINCE - 1
SENT = HubItem("r-1", "sent", 3, None, 1_700_000_000_000)
GONE = HubItem("r-2", HUB_REMOVED, 9, None, None)


def raw_frame(version: int, cls: type[Any], body: dict[str, Any]) -> bytes:
    """A frame of any body, as a peer that breaks the rules could write it."""
    return msgpack.packb([version, cls.TYPE_CODE, body], use_bin_type=True)  # type: ignore[no-any-return]


def test_the_newest_version_is_the_one_that_reports_hub_changes() -> None:
    assert PROTOCOL_VERSION >= HUB_CHANGES_SINCE == 13


def test_hub_since_goes_from_version_13_and_is_absent_before() -> None:
    request = PullRequest(5, 100, None, None, 42)
    assert decode_frame(encode_frame(request)) == (PROTOCOL_VERSION, request)
    with pytest.raises(LocalProtocolError, match="exists from protocol version 13"):
        encode_frame(request, version=OLDER)
    older = PullRequest(5, 100)
    assert decode_frame(encode_frame(older, version=OLDER)) == (OLDER, older)
    assert "hub_since" not in older.to_body(OLDER)
    for bad in (-1, "1", True, 2**63):
        with pytest.raises(LocalProtocolError, match="hub_since"):
            PullRequest(0, 1, None, None, bad)  # type: ignore[arg-type]
        body = PullRequest(0).to_body(HUB_CHANGES_SINCE)
        body["hub_since"] = bad
        with pytest.raises(RemoteProtocolError, match="hub_since"):
            decode_frame(raw_frame(HUB_CHANGES_SINCE, PullRequest, body))


def test_a_change_report_round_trips_with_its_mark_and_removed_items() -> None:
    report = HubReport((SENT, GONE), True, 17, False)
    assert report.changes_only
    assert decode_frame(encode_frame(report)) == (PROTOCOL_VERSION, report)
    whole = HubReport((SENT,), True, 17, True)
    assert not whole.changes_only
    assert decode_frame(encode_frame(whole)) == (PROTOCOL_VERSION, whole)
    older = HubReport((SENT,), True)
    assert decode_frame(encode_frame(older, version=OLDER)) == (OLDER, older)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (((SENT,), True, 3, None), "mark and whole come together"),
        (((SENT,), True, None, False), "mark and whole come together"),
        (((SENT,), True, -1, False), "mark must be an int"),
        (((SENT,), True, 3, 1), "whole must be a bool"),
        (((GONE,), True, 3, True), "state must be one of"),  # a whole list removes nothing
        (((GONE,), True, None, None), "state must be one of"),  # nor an older report
        ((((GONE[0], HUB_REMOVED, 9, "why", None),), True, 3, False), "a removed item"),
        ((((GONE[0], HUB_REMOVED, 9, None, 5),), True, 3, False), "a removed item"),
        (((GONE, SENT), True, 3, False), "ascending record_id"),
        (((SENT, SENT), True, 3, False), "ascending record_id"),
    ],
)
def test_reports_that_break_the_rules_are_refused_when_built(args: Any, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        HubReport(*args)


@pytest.mark.parametrize(
    ("version", "changes", "match"),
    [
        (HUB_CHANGES_SINCE, {"mark": None, "whole": None}, "carries its mark"),
        (HUB_CHANGES_SINCE, {"mark": 4, "whole": None}, "mark and whole come together"),
        (HUB_CHANGES_SINCE, {"items": [list(GONE)], "whole": True}, "state must be one of"),
        (HUB_CHANGES_SINCE, {"items": [list(GONE), list(GONE)]}, "ascending record_id"),
        (HUB_CHANGES_SINCE, {"mark": "4"}, "mark must be an int"),
        (OLDER, {"items": [list(GONE)]}, "state must be one of"),  # removed: version 13 on
    ],
)
def test_reports_from_the_wire_that_break_the_rules_are_remote_errors(
    version: int, changes: dict[str, Any], match: str
) -> None:
    if version >= HUB_CHANGES_SINCE:
        body: dict[str, Any] = {"items": [], "final": True, "mark": 4, "whole": False}
    else:
        body = {"items": [], "final": True}
    body.update(changes)
    with pytest.raises(RemoteProtocolError, match=match):
        decode_frame(raw_frame(version, HubReport, body))


def test_an_older_frame_carries_no_mark_and_a_newer_one_must() -> None:
    body = {"items": [], "final": True, "mark": 4, "whole": True}
    with pytest.raises(RemoteProtocolError, match="unknown fields"):
        decode_frame(raw_frame(OLDER, HubReport, body))
    with pytest.raises(LocalProtocolError, match="carries its mark"):
        encode_frame(HubReport((SENT,), True), version=HUB_CHANGES_SINCE)
    with pytest.raises(LocalProtocolError, match="exists from protocol version 13"):
        encode_frame(HubReport((SENT,), True, 4, True), version=OLDER)


def pair(versions: tuple[int, ...] | None, **options: Any) -> tuple[ClientProtocol, ServerProtocol]:
    if versions is not None:
        options["protocol_versions"] = versions
    client = enrolled_client(**options)
    return handshake(client, ServerProtocol(SERVER_ID), organisation=ORG)


def test_a_version_13_client_names_its_mark_and_an_older_one_does_not() -> None:
    client, server = pair(None)
    assert client.reports_hub_changes
    assert server.reports_hub_changes
    client.request_pull(0, 10, hub_since=8)
    [sent] = sent_messages(client)
    assert sent == PullRequest(0, 10, None, None, 8)

    client, server = pair(tuple(range(4, HUB_CHANGES_SINCE)))
    assert not client.reports_hub_changes
    assert not server.reports_hub_changes
    client.request_pull(0, 10, hub_since=8)  # not said on a version that has no such field
    [sent] = sent_messages(client)
    assert sent == PullRequest(0, 10)


def test_the_server_sends_the_mark_in_every_frame_and_only_from_version_13() -> None:
    client, server = pair(None, max_frame_bytes=MIN_MAX_FRAME_BYTES)
    client.request_pull(0, 10, hub_since=3)
    pump(client, server)
    server.events_received()
    server.send_pull_batch([], checkpoint=0, head_seq=0)
    items = [HubItem(f"r-{n:05d}", "failed", n + 1, "x" * 500, None) for n in range(300)]
    server.send_hub_report(items, mark=9, whole=False)
    frames = sent_messages(server)[1:]
    assert len(frames) > 1  # the client's frame size splits it
    assert all(isinstance(f, HubReport) and (f.mark, f.whole) == (9, False) for f in frames)
    assert [f.final for f in frames if isinstance(f, HubReport)] == [False] * (len(frames) - 1) + [
        True
    ]
    assert [i for f in frames if isinstance(f, HubReport) for i in f.items] == items

    _client, older = pair(tuple(range(4, HUB_CHANGES_SINCE)))
    with pytest.raises(LocalProtocolError, match="exists from protocol version 13"):
        older.send_hub_report([SENT], mark=9, whole=True)
    assert older.data_to_send() == []


def test_a_client_takes_a_change_report_as_an_event() -> None:
    client, server = pair(None)
    client.request_pull(0, 10, hub_since=3)
    pump(client, server)
    server.events_received()
    server.send_pull_batch([], checkpoint=0, head_seq=0)
    server.send_hub_report([SENT, GONE], mark=9, whole=False)
    pump(server, client)
    events = client.events_received()
    assert events[-1] == HubReport((SENT, GONE), True, 9, False)
