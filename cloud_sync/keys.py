"""Ed25519 command keys: load trusted public keys and verify (the gateway), generate a pair and sign
(the `ctl` client).

A key's id (`kid`) is its RFC 7638 JWK thumbprint, so the cloud and the gateway agree on it
without sharing file names. The gateway's side needs nothing but PyNaCl (libsodium, ~1 MB of
RSS): a public key file is a fixed Ed25519 SubjectPublicKeyInfo (RFC 8410) read by hand. The
signing side (key generation, PEM private keys, JWS encoding) loads cryptography and PyJWT (~12 MB),
only in the processes that sign.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# RFC 8410: SubjectPublicKeyInfo of an Ed25519 key = this DER prefix + the 32 raw key bytes
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", re.S)


class KeyFileError(ValueError):
    """A key file that cannot be used; the message reads `file: problem`."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


class RawPublicKey(Protocol):
    def public_bytes_raw(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A trusted command key (its 32 raw bytes)."""

    kid: str
    raw: bytes
    source: str = ""
    _verifier: VerifyKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(self.raw)}")
        object.__setattr__(self, "_verifier", VerifyKey(self.raw))

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self._verifier.verify(message, signature)
        except BadSignatureError:
            return False
        return True

    @classmethod
    def of(cls, key: bytes | RawPublicKey, source: str = "") -> PublicKey:
        """From raw bytes or a key object that gives them (cryptography's Ed25519PublicKey)."""
        raw = key if isinstance(key, bytes) else key.public_bytes_raw()
        return cls(key_id(raw), raw, source)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def key_id(key: bytes | RawPublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key."""
    raw = key if isinstance(key, bytes) else key.public_bytes_raw()
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def generate_keypair(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str], *,
                     overwrite: bool = False) -> PublicKey:
    """Write a new private key (PEM, PKCS#8, mode 0600) and its public key (PEM); return the public one."""
    from cryptography.hazmat.primitives import serialization  # lazy: the signing side only
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # lazy: the signing side only

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
    return PublicKey.of(public, str(pub))


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(path, f"cannot read: {exc.strerror or exc}") from None


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    data = _read(path)
    blocks = _PEM.findall(data)
    if any(b"PRIVATE KEY" in label for label, _ in blocks):
        raise KeyFileError(path, "is a private key; the gateway needs only the public key")
    pub = [body for label, body in blocks if label == b"PUBLIC KEY"]
    if not pub:
        raise KeyFileError(path, "not a PEM public key (expected '-----BEGIN PUBLIC KEY-----')")
    if len(blocks) > 1:   # a second key appended would be silently ignored: one key per file, listed in command_keys
        raise KeyFileError(path, f"holds {len(blocks)} PEM blocks; put one public key per file in cloud.command_keys")
    try:
        der = base64.b64decode(b"".join(pub[0].split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(path, "not a PEM public key (its base64 is damaged)") from None
    if len(der) != len(ED25519_SPKI_PREFIX) + 32 or not der.startswith(ED25519_SPKI_PREFIX):
        raise KeyFileError(path, "is not an Ed25519 key; commands are signed with Ed25519 (EdDSA) only")
    return PublicKey.of(der[len(ED25519_SPKI_PREFIX):], str(path))


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
    from cryptography.exceptions import UnsupportedAlgorithm  # lazy: the signing side only
    from cryptography.hazmat.primitives import serialization  # lazy: the signing side only
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # lazy: the signing side only

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
