"""Ed25519 command keys: generate a pair, load trusted public keys, sign a command (the `ctl` client).

A key's id (`kid`) is its RFC 7638 JWK thumbprint, so the cloud and the gateway agree on it
without sharing file names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class KeyFileError(ValueError):
    """A key file that cannot be used; the message reads `file: problem`."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A trusted command key."""

    kid: str
    key: Ed25519PublicKey
    source: str = ""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def key_id(key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key."""
    x = b64url(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def generate_keypair(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str], *,
                     overwrite: bool = False) -> PublicKey:
    """Write a new private key (PEM, PKCS#8, mode 0600) and its public key (PEM); return the public one."""
    priv, pub = Path(private_path), Path(public_path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    priv.parent.mkdir(parents=True, exist_ok=True)
    pub.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(priv, flags, 0o600)  # created 0600: never readable by others, not even briefly
    except FileExistsError:
        raise KeyFileError(priv, "exists; refusing to overwrite a private key") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem)
    public = key.public_key()
    pub.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return PublicKey(key_id(public), public, str(pub))


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(path, f"cannot read: {exc.strerror or exc}") from None


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        if b"PRIVATE KEY" in data:
            raise KeyFileError(path, "is a private key; the gateway needs only the public key") from None
        raise KeyFileError(path, "not a PEM public key (expected '-----BEGIN PUBLIC KEY-----')") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(path, f"is a {type(key).__name__.removesuffix('PublicKey') or 'non-Ed25519'} key;"
                                 " commands are signed with Ed25519 (EdDSA) only")
    return PublicKey(key_id(key), key, str(path))


def load_public_keys(paths: Iterable[str | os.PathLike[str]]) -> list[PublicKey]:
    """Load every trusted key; all problems are reported together (one line each)."""
    keys, problems = [], []
    for p in paths:
        try:
            keys.append(load_public_key(p))
        except KeyFileError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("\n".join(problems))
    return keys


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(path, "not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(path, "not an Ed25519 private key")
    return key


def sign_command(private_key: Ed25519PrivateKey, claims: Mapping[str, Any], kid: str | None = None) -> str:
    """A compact JWS (EdDSA) over `claims`; `kid` defaults to the key's thumbprint."""
    import jwt  # PyJWT pulls every algorithm in (~12 MB RSS): only the signing client (ctl) needs it

    headers = {"kid": kid if kid is not None else key_id(private_key.public_key())}
    return jwt.encode(dict(claims), private_key, algorithm="EdDSA", headers=headers)
