"""IncomingUpdate checks its fields in one expression for the common case (issue 18's
first copy builds one per record); everything else still gets the full checks."""

from __future__ import annotations

import pytest

from caresync.exceptions import InvalidInputError
from caresync.storage import IncomingUpdate
from caresync.storage.base import ConflictRow


def test_the_common_case_is_kept_as_given() -> None:
    item = IncomingUpdate("r1", b"\x00\x00", (), "clinic", None, b"\x00")
    assert (item.record_id, item.update, item.conflicts, item.organisation) == (
        "r1",
        b"\x00\x00",
        (),
        "clinic",
    )
    assert item.state_vector == b"\x00"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"record_id": ""}, "record_id"),
        ({"record_id": "x" * 257}, "record_id"),
        ({"record_id": 7}, "record_id"),
        ({"update": "text"}, "update"),
        ({"organisation": ""}, "organisation"),
        ({"organisation": "o" * 2049}, "organisation"),
        ({"state_vector": "text"}, "state_vector"),
        ({"conflicts": "rows"}, "conflicts"),
    ],
)
def test_anything_else_is_refused_by_the_full_checks(fields: dict[str, object], named: str) -> None:
    values: dict[str, object] = {"record_id": "r1", "update": b"\x00\x00", "conflicts": None}
    values.update(fields)
    with pytest.raises(InvalidInputError, match=named):
        IncomingUpdate(**values)  # type: ignore[arg-type]


def test_rows_of_another_record_are_refused() -> None:
    row = ConflictRow("c1", "r2", "kind", "subject", "warning", b"{}")
    with pytest.raises(InvalidInputError, match="belongs to record"):
        IncomingUpdate("r1", b"\x00\x00", (row,))


def test_bytes_like_updates_still_pass_the_full_checks() -> None:
    item = IncomingUpdate("r1", bytearray(b"\x00\x00"), None)  # type: ignore[arg-type]
    assert item.update == bytearray(b"\x00\x00")
