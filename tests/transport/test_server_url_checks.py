"""A server URL's check, remembered per (URL, insecure): the same answers and refusals
every time, whichever was asked first (a laptop checks its URL twice at every sync)."""

from __future__ import annotations

import pytest

from caresync import InsecureConnectionError, InvalidInputError
from caresync.transport.websocket import check_server_url

REMOTE = "ws://10.0.0.5:8765"


@pytest.mark.parametrize("first", [True, False])
def test_a_remembered_answer_never_lets_plain_ws_through_without_insecure(first: bool) -> None:
    for insecure in (first, not first, first, not first):
        if insecure:
            assert check_server_url(REMOTE, insecure=True) == REMOTE
        else:
            with pytest.raises(InsecureConnectionError):
                check_server_url(REMOTE)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1", "ws://", "ws://user:pw@127.0.0.1:1", "ws://127.0.0.1:0", "ws://[::1"],
)
def test_a_bad_url_is_refused_every_time(url: str) -> None:
    for _ in range(3):
        with pytest.raises(InvalidInputError):
            check_server_url(url, insecure=True)


def test_loopback_and_tls_urls_are_returned_as_given_every_time() -> None:
    for url in ("ws://127.0.0.1:8765", "ws://[::1]:8765", "wss://clinic.example.org/sync"):
        assert check_server_url(url) == url
        assert check_server_url(url) == url


def test_a_url_that_is_not_a_string_is_refused_before_any_lookup() -> None:
    with pytest.raises(InvalidInputError, match="must be a string"):
        check_server_url(["ws://127.0.0.1:1"])  # unhashable: refused, not a TypeError
