"""Signed cloudpickle payloads, and the kombu serializer that carries them.

Every byte string a driver or worker unpickles is signed with HMAC-SHA256
under the cluster's shared secret. A payload whose signature does not verify
is refused before it is unpickled. Each secret gets its own kombu serializer
(``celerynb-<key id>``), so one process can talk to several clusters and a
worker accepts only messages signed with its own secret.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import secrets
from typing import Any

import cloudpickle
from kombu.serialization import register

MAGIC = b"CNB1"
_DIGEST = 32
_HEADER = len(MAGIC) + _DIGEST
_registered: set[str] = set()


class SignatureError(ValueError):
    """A payload was unsigned, truncated or signed with another secret."""


def new_secret() -> str:
    """A fresh random secret for a cluster."""
    return secrets.token_urlsafe(32)


def key_id(secret: str) -> str:
    """A short public fingerprint of ``secret`` (safe to show and log)."""
    return hashlib.sha256(b"celerynb-key-id:" + secret.encode()).hexdigest()[:12]


def sign(secret: str, body: bytes) -> bytes:
    """Prefix ``body`` with a magic tag and its HMAC-SHA256 under ``secret``."""
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return MAGIC + mac + body


def verify(secret: str, blob: bytes | bytearray | memoryview) -> memoryview:
    """Return the body of a signed ``blob``; raise SignatureError if it does not verify."""
    view = memoryview(blob)
    if len(view) < _HEADER or view[: len(MAGIC)] != MAGIC:
        raise SignatureError(
            "refused an unsigned celerynb payload: it was not produced by a client "
            "holding this cluster's secret"
        )
    body = view[_HEADER:]
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, bytes(view[len(MAGIC) : _HEADER])):
        raise SignatureError(
            "refused a celerynb payload with a bad signature: the sender does not "
            "share this cluster's secret (check CELERYNB_SECRET on both sides)"
        )
    return body


def dumps(secret: str, obj: Any) -> bytes:
    """Cloudpickle ``obj`` (protocol 5) and sign it."""
    return sign(secret, cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def loads(secret: str, blob: bytes | bytearray | memoryview) -> Any:
    """Verify ``blob`` and unpickle it; nothing is unpickled if the signature fails."""
    return pickle.loads(verify(secret, blob))


def serializer_name(secret: str) -> str:
    """Register (once) and return the kombu serializer name for ``secret``."""
    name = f"celerynb-{key_id(secret)}"
    if name not in _registered:
        register(
            name,
            lambda obj: dumps(secret, obj),
            lambda blob: loads(secret, blob),
            content_type=f"application/x-{name}",
            content_encoding="binary",
        )
        _registered.add(name)
    return name
