"""What a server signs to prove who it is (pure: bytes in, bytes out).

A laptop pins its server's public key when it enrols. On every later
connection it sends a fresh nonce (:class:`~caresync.protocol.messages.ProveServer`)
and checks the server's Ed25519 signature (:class:`~caresync.protocol.messages.ServerProof`)
over :func:`server_proof_payload` before it sends a password, a token, its
secret or its outbox. The payload binds the proof to this connection:

* the **nonce**, so an old proof cannot be replayed;
* the **server id** and the **replica id**, so a proof for one conversation
  says nothing about another;
* the TLS **channel binding** (``tls-unique`` of the connection, empty without
  TLS), so a man in the middle holding another valid certificate, who relays
  the real server's proof, is caught: his TLS connection has another binding.

Each field is length-prefixed (4 bytes, big-endian), so no two different
field lists give the same bytes.
"""

from __future__ import annotations

__all__ = ["PROOF_CONTEXT", "server_proof_payload"]

PROOF_CONTEXT = b"caresync server proof v1"
"""Domain separation: these bytes start every payload, so the key signs nothing else alike."""


def server_proof_payload(
    nonce: bytes, server_id: str, replica_id: str | None, channel_binding: bytes | None
) -> bytes:
    """The bytes a server signs for a client's ``nonce`` on one connection."""
    fields = (
        nonce,
        server_id.encode("utf-8"),
        (replica_id or "").encode("utf-8"),
        channel_binding or b"",
    )
    return PROOF_CONTEXT + b"".join(len(f).to_bytes(4, "big") + f for f in fields)
