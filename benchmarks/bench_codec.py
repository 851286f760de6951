"""The sync protocol's own cost beside raw msgpack on the same data, in one run.

* first copy through the codec: 10,000 and 100,000 records of 500 bytes in
  batches of 1,000 — ``encode_frame`` + ``decode_frame`` (validation included) vs
  ``msgpack.packb``/``unpackb`` of the same lists;
* first copy through both protocol objects (server ``send_copy_batch`` → client
  ``receive_data`` → event), the whole sans-I/O path a shell pays;
* one live update, encode + decode, in microseconds (the per-edit latency share).
"""

from __future__ import annotations

import os
from typing import Any

import msgpack

from benchmarks.common import median_seconds, parse_args, write_results
from caresync.protocol import (
    ClientProtocol,
    CopyBatch,
    CopyRecord,
    LiveUpdate,
    ServerProtocol,
    decode_frame,
    encode_frame,
)

UPDATE_BYTES = 500
BATCH = 1_000


def make_records(count: int) -> list[CopyRecord]:
    blob = os.urandom(UPDATE_BYTES)
    return [CopyRecord(f"{i:08d}-0000-4000-8000-000000000000", blob) for i in range(count)]


def batches(records: list[CopyRecord]) -> list[CopyBatch]:
    out = []
    for start in range(0, len(records), BATCH):
        chunk = tuple(records[start : start + BATCH])
        done = start + len(chunk)
        out.append(
            CopyBatch(
                chunk,
                done,
                len(records),
                done * UPDATE_BYTES,
                len(records) * UPDATE_BYTES,
                chunk[-1].record_id,
                0,
                done == len(records),
            )
        )
    return out


def bench_codec(records: list[CopyRecord], repeats: int) -> tuple[float, float]:
    prepared = batches(records)

    def ours() -> None:
        for batch in prepared:
            decode_frame(encode_frame(batch))

    raw_batches = [[list(r) for r in b.records] for b in prepared]

    def raw() -> None:
        for body in raw_batches:
            msgpack.unpackb(msgpack.packb([1, 17, {"records": body}]))

    return median_seconds(ours, repeats), median_seconds(raw, repeats)


def bench_protocol(records: list[CopyRecord], repeats: int) -> float:
    def run() -> None:
        client = ClientProtocol(replica_id="r", server_id="s", organisation="o")
        server = ServerProtocol("s")
        client.send_hello()
        server.receive_data(client.data_to_send()[0])
        client.receive_data(server.data_to_send()[0])
        client.prove_server(b"n" * 32)  # the proof's bytes; checking it is the shell's
        server.receive_data(client.data_to_send()[0])
        server.send_server_proof(b"k" * 32, b"s" * 64)
        client.receive_data(server.data_to_send()[0])
        client.confirm_server()
        client.authenticate("u", "p", "o")
        server.receive_data(client.data_to_send()[0])
        server.accept_authentication("t", 0, "u", "o")
        client.receive_data(server.data_to_send()[0])
        client.events_received()  # Welcome, ServerProof, Authenticated
        after: str | None = None
        start = 0
        while True:
            client.request_copy(after, BATCH)
            server.receive_data(client.data_to_send()[0])
            chunk = records[start : start + BATCH]
            start += len(chunk)
            server.send_copy_batch(
                chunk,
                done_records=start,
                total_records=len(records),
                done_bytes=start * UPDATE_BYTES,
                total_bytes=len(records) * UPDATE_BYTES,
                feed_checkpoint=0,
                final=start >= len(records),
            )
            client.receive_data(server.data_to_send()[0])
            [batch] = client.events_received()
            assert isinstance(batch, CopyBatch)
            if batch.final:
                return
            after = batch.last_record_id

    return median_seconds(run, repeats)


def bench_live(repeats: int) -> tuple[float, float]:
    message = LiveUpdate(123_456, "00000001-0000-4000-8000-000000000000", os.urandom(200))
    n = 2_000

    def ours() -> None:
        for _ in range(n):
            decode_frame(encode_frame(message))

    raw_body = [1, 23, {"seq": 123_456, "record_id": message.record_id, "update": message.update}]

    def raw() -> None:
        for _ in range(n):
            msgpack.unpackb(msgpack.packb(raw_body))

    return median_seconds(ours, repeats) / n, median_seconds(raw, repeats) / n


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "codec")
    sizes = [2_000] if args.tiny else [10_000, 100_000]
    repeats = 1 if args.tiny else 5
    cases: list[dict[str, Any]] = []
    for size in sizes:
        records = make_records(size)
        ours, raw = bench_codec(records, repeats)
        proto = bench_protocol(records, repeats)
        cases += [
            {
                "case": "first copy: encode + decode, validated",
                "records": size,
                "caresync_ms": round(ours * 1e3, 1),
                "raw_msgpack_ms": round(raw * 1e3, 1),
                "ratio": round(ours / raw, 2),
            },
            {
                "case": "first copy: through both protocol objects",
                "records": size,
                "caresync_ms": round(proto * 1e3, 1),
                "records_per_s": round(size / proto),
            },
        ]
    ours_live, raw_live = bench_live(repeats)
    cases.append(
        {
            "case": "live update: encode + decode",
            "caresync_us": round(ours_live * 1e6, 2),
            "raw_msgpack_us": round(raw_live * 1e6, 2),
            "ratio": round(ours_live / raw_live, 2),
        }
    )
    write_results(args.out, "codec", cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
