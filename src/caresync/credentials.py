"""Secrets that bind a session to a server, an account and a replica.

* **The server key.** Every server has an Ed25519 key pair, made when its
  database is created and kept in it. A laptop pins the public key when it
  enrols, and on every later connection checks a signature by it (see
  :mod:`caresync.protocol.identity`) before sending any credential: an impostor
  that echoes the server id cannot sign. People compare keys by
  :func:`key_fingerprint` (``caresync server-key`` prints it).
* **Replica secrets.** Enrolment gives a replica 32 random bytes; the server
  keeps only their SHA-256, and the replica proves them at every login, so
  nobody else can push, report or be seen as that replica.
* **Session tokens** are random; the server keeps only their SHA-256.

SHA-256, not argon2, for secrets and tokens: they are 256 random bits, which
no guessing reaches; a slow hash only protects low-entropy passwords.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from caresync.exceptions import InvalidInputError

__all__ = [
    "REPLICA_SECRET_BYTES",
    "ServerKey",
    "key_fingerprint",
    "new_replica_secret",
    "new_session_token",
    "parse_fingerprint",
    "secret_matches",
    "sha256_hex",
    "verify_server_signature",
]

REPLICA_SECRET_BYTES = 32
_FINGERPRINT_PREFIX = "SHA256:"


class ServerKey:
    """A server's Ed25519 signing key."""

    __slots__ = ("_private", "public_bytes")

    def __init__(self, private_bytes: bytes) -> None:
        if not isinstance(private_bytes, bytes) or len(private_bytes) != 32:
            raise InvalidInputError("a server key is 32 bytes (a raw Ed25519 private key)")
        self._private = Ed25519PrivateKey.from_private_bytes(private_bytes)
        self.public_bytes: bytes = self._private.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        """The raw public key (32 bytes) laptops pin."""

    @classmethod
    def generate(cls) -> ServerKey:
        """A new random key."""
        return cls(
            Ed25519PrivateKey.generate().private_bytes(
                Encoding.Raw, PrivateFormat.Raw, NoEncryption()
            )
        )

    @classmethod
    def from_text(cls, text: str) -> ServerKey:
        """A key from :meth:`to_text` (how a server database keeps it)."""
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise InvalidInputError("the stored server key is not base64") from None
        return cls(raw)

    def to_text(self) -> str:
        """The private key as base64 text (secret: it lives only in the server database)."""
        raw = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return base64.b64encode(raw).decode("ascii")

    def sign(self, payload: bytes) -> bytes:
        """An Ed25519 signature (64 bytes) of ``payload``."""
        return self._private.sign(payload)

    @property
    def fingerprint(self) -> str:
        """The public key's fingerprint, as people compare it."""
        return key_fingerprint(self.public_bytes)

    def __repr__(self) -> str:
        return f"ServerKey({self.fingerprint})"


def verify_server_signature(public_key: bytes, payload: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s Ed25519 signature of ``payload``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def key_fingerprint(public_key: bytes) -> str:
    """``SHA256:`` and the base64 (unpadded) of the key's SHA-256, as ssh shows keys."""
    digest = hashlib.sha256(public_key).digest()
    return _FINGERPRINT_PREFIX + base64.b64encode(digest).decode("ascii").rstrip("=")


def parse_fingerprint(text: str) -> str:
    """A fingerprint a person typed, checked and normalised (InvalidInputError if not one)."""
    value = text.strip() if isinstance(text, str) else ""
    if not value.startswith(_FINGERPRINT_PREFIX):
        value = _FINGERPRINT_PREFIX + value
    body = value[len(_FINGERPRINT_PREFIX) :]
    try:
        digest = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise InvalidInputError(
            f"{text!r:.80} is not a server key fingerprint (expected SHA256:<43 base64 "
            "characters>, as `caresync server-key` prints it)"
        )
    return value


def new_replica_secret() -> bytes:
    """A fresh replica secret (32 random bytes)."""
    return secrets.token_bytes(REPLICA_SECRET_BYTES)


def new_session_token() -> str:
    """A fresh session token (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def sha256_hex(value: bytes | str) -> str:
    """The SHA-256 of a secret or a token, as stored server-side (hex)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()


def secret_matches(secret: bytes | None, stored_hash: str | None) -> bool:
    """True if ``secret`` hashes to ``stored_hash`` (compared in constant time)."""
    if secret is None or stored_hash is None:
        return False
    return hmac.compare_digest(sha256_hex(secret), stored_hash)
