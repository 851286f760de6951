"""The login throttle's parts: its policy in milliseconds, the keys a store is given, the
in-memory table the SQLite and memory stores keep, and the gate's use of the store:
failures through two gates on one store count together, a store that cannot be read
fails the login (never lets it through unthrottled), and a store without the login
methods keeps the throttle's own memory, as before."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher

from caresync.exceptions import InvalidInputError, StorageError
from caresync.gate import Gatekeeper, Refused
from caresync.protocol import ErrorCode
from caresync.storage import MemoryStore, UserAccount
from caresync.throttle import (
    MAX_KEY_LENGTH,
    FailureTable,
    LoginThrottle,
    ThrottlePolicy,
    address_key,
    key_text,
    lock_ms,
)

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def test_the_policy_is_the_throttles_settings_in_milliseconds() -> None:
    throttle = LoginThrottle()
    assert throttle.policy == ThrottlePolicy(
        first_lock_ms=1_000, max_lock_ms=300_000, forget_after_ms=3_600_000, max_tracked=100_000
    )
    assert (throttle.free(("account", "o", "u")), throttle.free(("address", "h"))) == (5, 20)
    assert [lock_ms(over, throttle.policy) for over in (1, 2, 3, 9, 10, 10_000)] == [
        1_000,
        2_000,
        4_000,
        256_000,
        300_000,
        300_000,
    ]
    with pytest.raises(InvalidInputError):
        ThrottlePolicy(first_lock_ms=2, max_lock_ms=1, forget_after_ms=1, max_tracked=1)
    with pytest.raises(InvalidInputError):
        ThrottlePolicy(first_lock_ms=1, max_lock_ms=1, forget_after_ms=0, max_tracked=1)


def test_keys_are_one_only_if_their_parts_are_and_long_ones_are_hashed() -> None:
    assert key_text(("account", "a,b", "c")) != key_text(("account", "a", "b,c"))
    assert key_text(("account", "o", "u")) != key_text(("address", "o", "u"))
    assert key_text(("account", "clinic", "dr.é")) == '["account","clinic","dr.é"]'
    long = key_text(("account", "o" * 256, "u" * 256))
    assert long.startswith("sha256:")
    assert len(long) <= MAX_KEY_LENGTH
    assert long != key_text(("account", "o" * 256, "u" * 255 + "v"))
    odd = key_text(("account", "clinic", "dr.\udc80"))  # not UTF-8: hashed, storable
    assert odd.startswith("sha256:")
    assert odd != key_text(("account", "clinic", "dr.\udc81"))


def test_an_ipv6_address_is_counted_by_its_64_network_and_others_as_they_are() -> None:
    """A client chooses the host half of its /64 itself: per address, a guesser with one
    /64 would have 2**64 addresses of 20 free failures each."""
    one = address_key("2001:db8:1:2::7")
    assert one == ("address", "2001:db8:1:2::/64")
    assert address_key("2001:db8:1:2:ffff:1:2:3") == one
    assert address_key("2001:DB8:1:2::7%eth0") == one  # a zone names no other network
    assert address_key("2001:db8:1:3::7") != one
    assert address_key("::ffff:10.0.0.7") == ("address", "10.0.0.7")  # IPv4, mapped
    assert address_key("10.0.0.7") == ("address", "10.0.0.7")
    assert address_key("10.0.0.8") != address_key("10.0.0.7")  # IPv4: each its own
    assert address_key("/run/caresync.sock") == ("address", "/run/caresync.sock")
    assert LoginThrottle.keys("o", "u", "2001:db8:1:2::9") == [("account", "o", "u"), one]
    with pytest.raises(InvalidInputError):
        LoginThrottle(address_checks=0)


def test_an_ipv4_client_carried_in_an_ipv6_address_is_counted_by_its_ipv4_address() -> None:
    """Reproduced (review of the /64 keys): behind a stateless translator (SIIT-DC, the
    NAT64 prefix ``64:ff9b::/96``) an IPv6-only server sees every IPv4 client as
    ``64:ff9b::<its IPv4 address>``, all in one /64: every IPv4 client on the internet was
    one throttle key, and one guesser's 20 failures locked all of them out. Such an
    address, an IPv4-translated one (``::ffff:0:a.b.c.d``), a 6to4 one (``2002:``, one
    IPv4 host's /48) and a Teredo one are counted by the IPv4 address they carry."""
    assert address_key("64:ff9b::10.0.0.7") == ("address", "10.0.0.7")
    assert address_key("64:ff9b::a00:8") == ("address", "10.0.0.8")
    assert address_key("::ffff:0:10.0.0.7") == ("address", "10.0.0.7")
    assert (
        address_key("2002:a00:7::1") == address_key("2002:a00:7:ff::2") == ("address", "10.0.0.7")
    )
    teredo = "2001:0:4136:e378:8000:63bf:3fff:fdd2"  # RFC 4380's example: client 192.0.2.45
    assert address_key(teredo) == ("address", "192.0.2.45")
    assert address_key("64:ff9b:1::10.0.0.7") == ("address", "64:ff9b:1::/64")  # not /96


async def test_guesses_from_one_translated_ipv4_client_do_not_lock_out_the_others() -> None:
    store = MemoryStore()
    gate = _gate(store, LoginThrottle(address_free=3, first_lock_s=60))

    async def code(username: str, address: str) -> str:
        refused = await gate.check_password("clinic-a", username, "guess", address)
        assert isinstance(refused, Refused)
        return refused.code

    guesser = "64:ff9b::203.0.113.9"
    assert [await code(f"x{n}", guesser) for n in range(4)] == [ErrorCode.BAD_CREDENTIALS] * 4
    assert await code("x9", guesser) == ErrorCode.THROTTLED
    assert await code("x9", "64:ff9b::198.51.100.20") == ErrorCode.BAD_CREDENTIALS


def test_the_in_memory_table_forgets_idle_keys_and_keeps_at_most_max_tracked() -> None:
    policy = ThrottlePolicy(
        first_lock_ms=1_000, max_lock_ms=1_000, forget_after_ms=10_000, max_tracked=50
    )
    table = FailureTable()
    for n in range(120):
        table.failed([(f"k{n}", 5)], 1_000 + n, policy)
        assert len(table) <= 50
    assert table.row("k0") is None
    assert table.row("k119") == (1, 1_119, 0)
    table.failed([("late", 5)], 1_119 + 10_000, policy)  # every other key idle by then
    assert len(table) == 1


class _Store(MemoryStore):
    """A memory store whose failed-login reads can be made to fail."""

    broken = False
    password_reads = 0

    async def login_wait_ms(self, keys: Any, now_ms: int, forget_after_ms: int) -> int:
        if self.broken:
            raise StorageError("reading failed logins: lost the connection to PostgreSQL")
        return await super().login_wait_ms(keys, now_ms, forget_after_ms)

    async def get_user(self, organisation: str, username: str) -> UserAccount | None:
        self.password_reads += 1
        return await super().get_user(organisation, username)


def _gate(store: Any, throttle: LoginThrottle | None) -> Gatekeeper:
    return Gatekeeper(
        store,
        server_id="server-1",
        hasher=CHEAP,
        session_ttl_s=3600,
        now_ms=lambda: 0,
        throttle=throttle,
    )


async def _login(gate: Gatekeeper, password: str) -> Literal["ok"] | str:
    checked = await gate.check_password("clinic-a", "dr.a", password, "10.0.0.7")
    return checked.code if isinstance(checked, Refused) else "ok"


async def test_two_gates_on_one_store_count_failures_together() -> None:
    """What two server processes on one PostgreSQL database do, in one process: the
    failures through each gate count against one account, and its lock holds on both."""
    store = _Store()
    await store.add_user("clinic-a", "dr.a", CHEAP.hash("right"))
    one = _gate(store, LoginThrottle(account_free=3, first_lock_s=60))
    two = _gate(store, LoginThrottle(account_free=3, first_lock_s=60))
    results = [await _login(gate, "wrong") for gate in (one, two, one, two)]
    assert results == [ErrorCode.BAD_CREDENTIALS] * 4  # the fourth locks the account
    assert [await _login(gate, "right") for gate in (one, two)] == [ErrorCode.THROTTLED] * 2
    now = one.throttle_now_ms()
    for gate in (one, two):  # the lock has passed
        gate.throttle_now_ms = lambda: now + 60_001
    assert [await _login(gate, "right") for gate in (one, two)] == ["ok", "ok"]


async def test_a_store_that_cannot_be_read_fails_the_login() -> None:
    store = _Store()
    await store.add_user("clinic-a", "dr.a", CHEAP.hash("right"))
    gate = _gate(store, LoginThrottle())
    store.broken = True
    with pytest.raises(StorageError):
        await _login(gate, "right")
    with pytest.raises(StorageError):
        await gate.malformed_login("10.0.0.7", "a header that is not Basic")
    assert store.password_reads == 0  # refused before the account was even read
    store.broken = False
    assert await _login(gate, "right") == "ok"


class _OlderStore:
    """A third party's store written before the login methods: everything else of a
    memory store, through ``__getattr__``."""

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name.startswith("login_"):
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_a_store_without_the_login_methods_keeps_the_throttles_own_memory() -> None:
    inner = MemoryStore()
    await inner.add_user("clinic-a", "dr.a", CHEAP.hash("right"))
    throttle = LoginThrottle(account_free=1, first_lock_s=60)
    gate = _gate(_OlderStore(inner), throttle)
    assert await _login(gate, "wrong") == ErrorCode.BAD_CREDENTIALS
    assert await _login(gate, "wrong") == ErrorCode.BAD_CREDENTIALS
    assert await _login(gate, "right") == ErrorCode.THROTTLED
    assert len(throttle) == 2  # the account and the address, in the throttle's memory


class _CountingHasher(PasswordHasher):
    """CHEAP's cost, counting the passwords it checks."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.checks = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.checks += 1
        return super().verify(hash, password)


async def test_concurrent_guesses_get_no_more_password_checks_than_one_after_another() -> None:
    """Many guessers at one account at the same instant, through two gates on one store
    (two processes): each reads the account unlocked before any guess is checked, yet
    only the five free ones and the one that earns the first lock are checked (as one
    guesser after another gets); the rest are refused unchecked."""
    store = MemoryStore()
    hasher = _CountingHasher()
    await store.add_user("clinic-a", "dr.a", hasher.hash("right"))
    gates = [_gate(store, LoginThrottle(first_lock_s=60)) for _ in range(2)]
    for gate in gates:
        gate.hasher = hasher
    results = await asyncio.gather(
        *(
            gates[n % 2].check_password("clinic-a", "dr.a", f"guess-{n}", f"10.0.{n}.1")
            for n in range(40)
        )
    )
    codes = [r.code if isinstance(r, Refused) else "ok" for r in results]
    assert hasher.checks == 6
    assert codes.count(ErrorCode.BAD_CREDENTIALS) == 6
    assert codes.count(ErrorCode.THROTTLED) == 34


async def test_many_right_passwords_of_one_account_at_once_all_get_in() -> None:
    """Reproduced (bench_server_scale's 2,000 laptops of one account, 20 logins at a
    time): each login's claim counted until its check was over, so the sixth right
    password in flight found the account locked. A gate checks one password of an
    account at a time: a right one clears its claim before the next is claimed. Two
    gates (two processes) have at most two in flight, under the five free."""
    store = MemoryStore()
    await store.add_user("clinic-a", "dr.a", CHEAP.hash("right"))
    gates = [_gate(store, LoginThrottle(first_lock_s=60)) for _ in range(2)]
    results = await asyncio.gather(
        *(
            gates[n % 2].check_password("clinic-a", "dr.a", "right", f"10.0.{n}.1")
            for n in range(30)
        )
    )
    assert [r.code if isinstance(r, Refused) else "ok" for r in results] == ["ok"] * 30


async def test_guesses_from_one_address_at_many_accounts_at_once_pass_its_free_by_a_few() -> None:
    """Reproduced: an address's failures are counted after each check, and every guess
    sent at once read the address unlocked before any was counted, so 40 guesses at 40
    accounts (one each, under every account's own 5) were all checked, against an
    address allowed 3. A process now checks at most ``address_checks`` (4) passwords of
    one address at a time: the others wait, then find the address locked."""
    store = MemoryStore()
    hasher = _CountingHasher()
    for n in range(40):
        await store.add_user("clinic-a", f"user-{n}", hasher.hash("right"))
    hasher.checks = 0
    gate = _gate(store, LoginThrottle(address_free=3, first_lock_s=60))
    gate.hasher = hasher
    results = await asyncio.gather(
        *(gate.check_password("clinic-a", f"user-{n}", "guess", "10.0.0.7") for n in range(40))
    )
    codes = [r.code if isinstance(r, Refused) else "ok" for r in results]
    assert 4 <= hasher.checks <= 3 + 4  # one guesser after another gets 4 checks
    assert codes.count(ErrorCode.BAD_CREDENTIALS) == hasher.checks
    assert codes.count(ErrorCode.THROTTLED) == 40 - hasher.checks


async def test_right_passwords_of_many_accounts_from_one_address_at_once_all_get_in() -> None:
    """A clinic's laptops behind one address, logging in at the same moment: they take
    their turns, and a right password counts nothing against the address."""
    store = MemoryStore()
    for n in range(30):
        await store.add_user("clinic-a", f"user-{n}", CHEAP.hash("right"))
    gate = _gate(store, LoginThrottle(address_free=3, first_lock_s=60))
    results = await asyncio.gather(
        *(gate.check_password("clinic-a", f"user-{n}", "right", "10.0.0.7") for n in range(30))
    )
    assert [r.code if isinstance(r, Refused) else "ok" for r in results] == ["ok"] * 30
    assert not gate._checking  # every turn given back


class _HeldStore(MemoryStore):
    """A store whose account reads wait until ``release`` is set (checks in flight)."""

    def __init__(self, holding: int) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.all_held = asyncio.Event()
        self.holding, self.held = holding, 0

    async def get_user(self, organisation: str, username: str) -> UserAccount | None:
        self.held += 1
        if self.held == self.holding:
            self.all_held.set()
        await self.release.wait()
        return await super().get_user(organisation, username)


async def test_a_login_dropped_while_it_waits_for_its_address_turn_gives_back_its_turns() -> None:
    """A waiting login cancelled (its connection gone, the server stopping) leaves no
    turn held and no entry behind: the address's next guesses get their checks."""
    store = _HeldStore(holding=4)
    gate = _gate(store, LoginThrottle(address_free=20, first_lock_s=60))
    tasks = [
        asyncio.create_task(gate.check_password("clinic-a", f"u{n}", "guess", "10.0.0.7"))
        for n in range(6)
    ]
    async with asyncio.timeout(10):
        await store.all_held.wait()  # four checks in flight: the address's four turns
    address = gate._checking[("address", "10.0.0.7")]
    assert address[1] == [6]  # the fifth and sixth wait for a turn of the address
    tasks[4].cancel()
    store.release.set()
    async with asyncio.timeout(10):
        done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[4], asyncio.CancelledError)
    assert [r.code for r in done if isinstance(r, Refused)] == [ErrorCode.BAD_CREDENTIALS] * 5
    assert gate._checking == {}
    assert store.held == 5  # the dropped login read no account
    again = await gate.check_password("clinic-a", "u4", "guess", "10.0.0.7")
    assert isinstance(again, Refused)
    assert again.code == ErrorCode.BAD_CREDENTIALS
    assert gate._checking == {}


async def test_guesses_from_addresses_of_one_ipv6_64_count_together() -> None:
    store = MemoryStore()
    gate = _gate(store, LoginThrottle(address_free=3, first_lock_s=60))

    async def code(username: str, address: str) -> str:
        refused = await gate.check_password("clinic-a", username, "guess", address)
        assert isinstance(refused, Refused)
        return refused.code

    # Made-up names: each account's own count stays under its 5.
    assert [await code(f"x{n}", f"2001:db8:0:5::{n}") for n in range(4)] == [
        ErrorCode.BAD_CREDENTIALS
    ] * 4
    assert await code("x9", "2001:db8:0:5:ab::1") == ErrorCode.THROTTLED
    assert await code("x9", "2001:db8:0:6::1") == ErrorCode.BAD_CREDENTIALS


async def test_a_wall_clock_set_back_does_not_lengthen_a_lock_of_an_unshared_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One process serves an SQLite or in-memory store: its throttle's times are the
    monotonic clock's, as before the failures moved into the store, so a wall clock set
    back an hour (NTP, a VM resumed) leaves a 60 s lock at 60 s, not an hour and 60 s."""
    store = MemoryStore()
    await store.add_user("clinic-a", "dr.a", CHEAP.hash("right"))
    gate = _gate(store, LoginThrottle(account_free=1, first_lock_s=60))
    assert [await _login(gate, "wrong") for _ in range(2)] == [ErrorCode.BAD_CREDENTIALS] * 2
    real = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: real - 3_600 * 10**9)
    refused = await gate.check_password("clinic-a", "dr.a", "right", "10.0.0.7")
    assert isinstance(refused, Refused)
    assert refused.code == ErrorCode.THROTTLED
    assert refused.message.endswith("try again in 60 s")
