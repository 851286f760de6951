"""Version 16: ``Authenticated.account_states`` says, per account of ``accounts``, whether
it is disabled and its password mark; peers of version 15 and older never see it."""

from __future__ import annotations

import msgpack
import pytest
from tests.protocol.session import (
    ORG,
    PASSWORD,
    SERVER_ID,
    TOKEN,
    USER,
    enrolled_client,
    prove,
    pump,
)

from caresync.exceptions import LocalProtocolError, RemoteProtocolError
from caresync.protocol import (
    ACCOUNT_STATES_SINCE,
    PROTOCOL_VERSION,
    AccountName,
    AccountState,
    Authenticated,
    ServerProtocol,
    decode_frame,
    encode_frame,
)

NAMES = (AccountName("dr.a", "Dr A"), AccountName("nurse.c", "nurse.c"))
STATES = (AccountState("dr.a", False, b"\x01" * 16), AccountState("nurse.c", True, b"\x02" * 16))


def _session(**fields: object) -> Authenticated:
    return Authenticated(TOKEN, 0, USER, ORG, **fields)  # type: ignore[arg-type]


def test_version_16_is_the_newest_and_carries_the_states() -> None:
    assert PROTOCOL_VERSION == ACCOUNT_STATES_SINCE == 16
    message = _session(accounts=NAMES, account_states=STATES)
    version, decoded = decode_frame(encode_frame(message))
    assert version == 16
    assert isinstance(decoded, Authenticated)
    assert decoded.account_states == STATES
    assert "account_states=<2 states>" in repr(decoded)
    # Lists from the wire become AccountState tuples.
    assert _session(accounts=NAMES, account_states=[list(s) for s in STATES]) == message


def test_an_older_frame_has_no_states_and_none_is_written_into_one() -> None:
    assert "account_states" not in Authenticated.fields_in(15)
    with pytest.raises(LocalProtocolError, match="exists from protocol version 16"):
        encode_frame(_session(accounts=NAMES, account_states=STATES), version=15)
    version, decoded = decode_frame(encode_frame(_session(accounts=NAMES), version=15))
    assert version == 15
    assert isinstance(decoded, Authenticated)
    assert decoded.account_states is None


@pytest.mark.parametrize(
    ("accounts", "states"),
    [
        (None, STATES),  # states without the names
        (NAMES, STATES[:1]),  # not one per account
        (NAMES, STATES[::-1]),  # not in the names' order
        (NAMES, (STATES[0], AccountState("nurse.x", True, b"\x02" * 16))),
        (NAMES, (STATES[0], ("nurse.c", 1, b"\x02" * 16))),  # disabled not a bool
        (NAMES, (STATES[0], ("nurse.c", True, b"\x02" * 7))),  # mark too short
        (NAMES, (STATES[0], ("nurse.c", True, b"\x02" * 65))),  # mark too long
        (NAMES, (STATES[0], ("nurse.c", True, "not bytes"))),
        (NAMES, (STATES[0], ("nurse.c", True))),  # not a triple
        (NAMES, "dr.a"),
    ],
)
def test_states_that_break_the_rules_are_refused(accounts: object, states: object) -> None:
    with pytest.raises(LocalProtocolError):
        _session(accounts=accounts, account_states=states)
    # From the wire, the same is the peer's fault: nothing of it is taken.
    good = msgpack.unpackb(encode_frame(_session(accounts=NAMES, account_states=STATES)))
    good[2]["accounts"] = None if accounts is None else [list(a) for a in NAMES]
    good[2]["account_states"] = states
    with pytest.raises(RemoteProtocolError):
        decode_frame(msgpack.packb(good))


def test_the_states_reach_a_version_16_client_only() -> None:
    for versions, expected in (((4, 15, 16), STATES), ((4, 15), None), ((4, 5, 6), None)):
        client = enrolled_client(protocol_versions=versions)
        server = ServerProtocol(SERVER_ID)
        client.send_hello()
        pump(client, server)
        server.events_received()
        pump(server, client)
        client.events_received()
        prove(client, server)
        client.authenticate(USER, PASSWORD, ORG)
        pump(client, server)
        server.events_received()
        server.accept_authentication(
            TOKEN, 1_900_000_000_000, USER, ORG, accounts=NAMES, account_states=STATES
        )
        pump(server, client)
        [session] = [e for e in client.events_received() if isinstance(e, Authenticated)]
        assert session.account_states == expected
        assert session.accounts == NAMES
