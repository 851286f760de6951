"""Run every benchmark once at a tiny size, so that none of them rots."""

from __future__ import annotations

import asyncio
import importlib
import json
from pathlib import Path

import pytest

_HERE = Path(__file__).parent.parent / "benchmarks"
# Fuzz runs follow the same interface: ``main(["--tiny", "--out", path])``.
BENCHMARKS = sorted(p.stem for pattern in ("bench_*.py", "fuzz_*.py") for p in _HERE.glob(pattern))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_at_tiny_size(name: str, tmp_path: Path) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    out = tmp_path / f"{name}.json"
    assert module.main(["--tiny", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results, f"{name} wrote no results"
    if name.startswith("fuzz_"):  # every damaged input was taken or refused, nothing else
        assert results["cases"][0]["other"] == 0
        assert results["cases"][0]["mutations"] > 0


def test_the_incremental_sync_alone_gives_each_sides_cpu_per_sync(tmp_path: Path) -> None:
    """``bench_sync --only incremental``: caresync's syncs with each side's CPU time per
    sync, the peer's beside them, and the raw limit; no other case."""
    from benchmarks import bench_sync

    out = tmp_path / "sync_incremental.json"
    assert bench_sync.main(["--tiny", "--only", "incremental", "--out", str(out)]) == 0
    cases = json.loads(out.read_text())["cases"]
    assert {c["case"].split(",")[0] for c in cases} == {"incremental sync"}
    [ours] = [c for c in cases if c["system"] == "caresync"]
    assert len(ours["runs"]) == len(ours["laptop_cpu_s"]) == len(ours["server_cpu_s"]) == 2
    assert all(cpu > 0 for cpu in ours["laptop_cpu_s"] + ours["server_cpu_s"])
    assert "ratio_to_peer" in ours
    assert {c["system"] for c in cases} == {"caresync", "peer", "raw limit"}


def test_incremental_ab_runs_on_copies_of_the_prepared_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``incremental_ab``: prepared once, each run syncs copies of the prepared files (left
    as they were) and says what each sync cost."""
    from benchmarks import incremental_ab

    work = tmp_path / "work"
    assert incremental_ab.main(["prepare", str(work), "--records", "1200"]) == 0
    prepared = sorted(p.name for p in work.iterdir())
    runs = []
    for label in ("A", "B"):
        assert (
            incremental_ab.main(
                ["run", str(work), "--records", "1200", "--rounds", "2", "--label", label]
            )
            == 0
        )
        runs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert sorted(p.name for p in work.iterdir()) == prepared
    for run, label in zip(runs, ("A", "B"), strict=True):
        assert run["label"] == label
        assert len(run["wall_ms"]) == len(run["laptop_cpu_ms"]) == len(run["server_cpu_ms"]) == 2
        assert all(frames > 0 for frames in run["laptop_wal_frames"])


def test_copy_ab_and_copy_profile_copy_a_built_server_with_its_cards_and_pairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``copy_ab``: built once, each copy enrols a laptop from a copy of the server (left as
    it was) and counts what it holds; ``copy_profile`` says where the laptop's time went."""
    from benchmarks import copy_ab, copy_profile

    db = tmp_path / "server.db"
    assert copy_ab.main(["build", str(db), "300"]) == 0
    built = db.read_bytes()
    assert copy_ab.main(["copy", str(db), "smoke", "2"]) == 0
    run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert run["records"] == [300, 300]
    assert run["pairs"][0] == run["pairs"][1]
    assert len(run["walls"]) == len(run["laptop_cpu"]) == len(run["server_cpu"]) == 2
    assert len(run["laptop_written_mb"]) == 2
    assert all(mb > 0 for mb in run["laptop_written_mb"])  # a laptop's copy writes its file
    asyncio.run(copy_profile.main(db, profile=False, top=5))
    printed = capsys.readouterr().out
    assert "records 300" in printed
    assert "store jobs" in printed
    assert db.read_bytes() == built


def test_sim_tally_counts_what_a_pull_frame_carries() -> None:
    """``sim_tally``'s measure of one frame: entries, checks, rows, rows sent again."""
    from benchmarks import sim_tally

    from caresync.protocol import CheckedState, CopyConflict, FeedItem, PullBatch, encode_frame

    row = CopyConflict("rec-a", "c-1", "field", "weightKg", "block", b'{"x":1}')
    batch = PullBatch(
        (FeedItem(3, "rec-a", b"u1"),),
        3,
        3,
        checked=(CheckedState("rec-a", b"\x01\x05\x02", None),),
        conflicts=(row,),
    )
    sim_tally.TALLY.clear()
    sim_tally.SEEN.clear()
    for _ in range(2):
        sim_tally.tally(encode_frame(batch, version=10), "laptop-1")
    tally = sim_tally.TALLY
    assert (tally["frames_19"], tally["pull_entries_n"], tally["checked_n"]) == (2, 2, 2)
    assert (tally["rows_n"], tally["rows_payload"]) == (2, 2 * len(row.payload))
    assert tally["rows_sent_again_n"] == 1


def test_noop_ab_times_syncs_that_move_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """``noop_ab``: a small server, syncs with nothing to do, one JSON line of medians."""
    from benchmarks import noop_ab

    assert noop_ab.main(["20", "3"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["median_ms"] > 0
    assert line["p10_ms"] <= line["median_ms"] <= line["p90_ms"]
    assert line["laptop_cpu_ms"] > 0
    assert line["server_cpu_ms"] > 0


def test_outbox_brief_ab_times_the_outbox_reads(capsys: pytest.CaptureFixture[str]) -> None:
    """``outbox_brief_ab``: a few updates and a large one, one JSON line of medians."""
    from benchmarks import outbox_brief_ab

    assert outbox_brief_ab.main(["1", "1", "1"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["few_pair_us"] > 0
    assert line["large_page_wall_ms"] > 0


def test_hub_report_ab_sends_the_whole_list_against_no_item(tmp_path: Path) -> None:
    """``hub_report_ab``: the whole list's items and bytes against an empty change report."""
    from benchmarks import hub_report_ab

    out = tmp_path / "hub.json"
    assert hub_report_ab.main(["300", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["whole"]["items"], result["changes"]["items"]) == (300, 0)
    assert result["whole"]["bytes"] > 100 * result["changes"]["bytes"]
    assert len(result["whole"]["runs_s"]) == len(result["changes"]["runs_s"]) == 2


def test_hub_sender_ab_makes_the_same_puts_both_ways(tmp_path: Path) -> None:
    """``hub_sender_ab``: both rounds PUT every due summary, once, and report each run."""
    from benchmarks import hub_sender_ab

    out = tmp_path / "sender.json"
    assert hub_sender_ab.main(["120", "40", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["whole"]["puts"] == result["paged"]["puts"] == [40, 40]
    assert len(result["whole"]["runs_s"]) == len(result["paged"]["runs_s"]) == 2
    assert result["ratio_median_whole_to_paged"] > 0


def test_hub_held_ab_looks_at_every_held_row_one_way_and_none_the_other(tmp_path: Path) -> None:
    """``hub_held_ab``: after a push elsewhere, the sender as it was snapshots every held
    summary again; the sender now, none."""
    from benchmarks import hub_held_ab

    out = tmp_path / "held.json"
    assert hub_held_ab.main(["6", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["every"]["snapshots"] == [6, 6]
    assert result["released"]["snapshots"] == [0, 0]
    assert result["released"]["commit_lock_s"] == [0.0, 0.0]
    assert len(result["every"]["runs_s"]) == len(result["released"]["runs_s"]) == 2


def test_fanout_ab_times_the_fan_out_to_subscribed_connections(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``fanout_ab``: real protocols brought to a subscription, one edit fanned out to each
    of them per round, one JSON line with the CPU per connection."""
    from benchmarks import fanout_ab

    assert fanout_ab.main(["5", "3"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["connections"] == 5
    assert line["edits"] == 3
    assert 0 < line["cpu_us_per_connection"]["median"] < 1e6
    assert fanout_ab.main(["0", "3"]) == 2  # usage


def test_a_peer_wait_ends_when_done_or_after_a_quiet_spell() -> None:
    """``Counted.wait_until_or_quiet`` (the peer's waits in ``bench_sync``): True as soon as
    the condition holds, however long the calls take to come; False once nothing is
    counted for the quiet spell, so that an update the peer's room dropped is counted as
    dropped instead of holding the benchmark for ``LIMIT_S``."""
    from benchmarks.bench_sync import Counted

    async def scenario() -> tuple[bool, bool, int]:
        counted = Counted()

        async def calls(n: int) -> None:
            for _ in range(n):
                await asyncio.sleep(0)  # each call in a later turn of the loop
                counted(None)

        feeder = asyncio.create_task(calls(5))
        done = await counted.wait_until_or_quiet(lambda: counted.count >= 5, quiet_s=5.0)
        await feeder
        # Three more arrive, the fourth never does: quiet after the third.
        feeder = asyncio.create_task(calls(3))
        quiet = await counted.wait_until_or_quiet(lambda: counted.count >= 9, quiet_s=0.2)
        await feeder
        return done, quiet, counted.count

    assert asyncio.run(scenario()) == (True, False, 8)


def test_edits_a_peer_document_lacks_are_counted() -> None:
    """``missing_edits``: the edits (record, city) a peer document does not show."""
    from benchmarks.bench_sync import missing_edits
    from pycrdt import Doc, Map

    doc: Doc = Doc()
    records = doc.get("records", type=Map)
    records["a"] = Map({"city": "Thiès 0"})
    records["b"] = Map({"city": "Dakar"})
    assert missing_edits(doc, [("a", "Thiès 0"), ("b", "Thiès 0")]) == 1
    assert missing_edits(doc, [("a", "Thiès 0")]) == 0


def test_a_latency_round_that_lost_every_delivery_keeps_the_rounds_paired() -> None:
    """A peer round whose every delivery the room dropped has no time: its run is None,
    not left out, so that ``with_ratios`` still compares round i with round i (left
    out, the peer's later rounds moved up one and each ratio compared two rounds);
    a latency case whose every round lost deliveries still gives figures (None)."""
    from benchmarks.bench_sync import latency_case, with_ratios

    ours = latency_case(
        "caresync", 2, [([0.001], [0.001]), ([0.002], [0.002]), ([0.003], [0.003])], ""
    )
    peer = latency_case("peer", 2, [([0.002], [0.002]), ([], []), ([0.004], [0.004])], "")
    assert peer["runs"] == [0.002, None, 0.004]
    [ours_after, _peer] = with_ratios([ours, peer])
    assert ours_after["ratio_to_peer"] == {"median": 0.62, "min": 0.5, "max": 0.75}
    lost = latency_case("peer", 2, [([], []), ([0.002], [])], "")
    assert lost["runs"] == [None, 0.002]
    assert lost["last_laptop_p99_ms"] == {"median": None, "min": None, "max": None}
