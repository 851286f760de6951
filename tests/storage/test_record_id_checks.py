"""``check_record_ids``: its one-pass common case refuses what the full check refuses."""

from __future__ import annotations

import pytest

from caresync.exceptions import InvalidInputError
from caresync.storage.base import check_record_ids


class Named(str):
    """A str subclass: not the common case, yet a record id."""


def test_ids_pass_as_a_list_of_the_same_ids() -> None:
    ids = ["a", "b" * 256, "a"]
    assert check_record_ids(ids) == ids
    assert check_record_ids(tuple(ids)) == ids
    assert check_record_ids(dict.fromkeys(ids)) == ["a", "b" * 256]
    assert check_record_ids([Named("x")]) == ["x"]
    assert check_record_ids([]) == []


@pytest.mark.parametrize(
    "ids",
    [["a", ""], ["b" * 257], ["a", 1], [None], [b"a"], "abc", b"abc", 7, None],
)
def test_anything_else_is_refused(ids: object) -> None:
    with pytest.raises(InvalidInputError, match="record"):
        check_record_ids(ids)
