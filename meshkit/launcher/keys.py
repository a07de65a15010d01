"""Development signing keys and tokens.

On first use an ES256 (P-256) key pair is created in `<data-dir>/keys/`:

    keys/private.pem   PKCS#8 private key, mode 0600
    keys/jwks.json     the public key as a JWKS; Envoy's jwt_authn reads it (local_jwks)

Tokens carry iss=stockmesh-dev, aud=stockmesh and sub=<account>; Envoy verifies them and
forwards the payload to the services in `x-jwt-payload`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from meshkit import auth

ISSUER = "stockmesh-dev"
AUDIENCE = "stockmesh"
ALGORITHM = "ES256"
DEFAULT_TTL_SECONDS = 86_400


@dataclass(frozen=True)
class DevKeys:
    folder: Path
    private_key_path: Path
    jwks_path: Path
    kid: str

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return _read_private(self.private_key_path)


def keys_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "keys"


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # `stockmesh token` and `stockmesh up` may both create the keys at the same moment.
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    jwk: dict[str, str] = ECAlgorithm.to_jwk(public_key, as_dict=True)
    # RFC 7638 thumbprint as key id, so the kid changes whenever the key does.
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")},
                           separators=(",", ":"), sort_keys=True)
    jwk["kid"] = jwt.utils.base64url_encode(hashlib.sha256(canonical.encode()).digest()).decode()
    jwk["alg"] = ALGORITHM
    jwk["use"] = "sig"
    return jwk


def ensure_keys(data_dir: Path) -> DevKeys:
    """Create the key pair and JWKS if missing (idempotent, safe across processes). Keys that
    exist are only read, so a folder mounted read-only works (compose's simulator mints its
    tokens from such a mount; round 17: the folder's chmod and lock failed there, and it never
    traded). Both files are written whole (renamed into place), so existing means complete."""
    folder = keys_dir(data_dir)
    private_path = folder / "private.pem"
    jwks_path = folder / "jwks.json"
    if private_path.exists() and jwks_path.exists():
        try:
            os.chmod(folder, 0o700)  # a folder made by hand keeps no lax mode
        except OSError:
            pass  # mounted read-only: as it is
        return _read_keys(folder, private_path, jwks_path)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    with _locked(folder):
        if not private_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_atomic(private_path, pem, 0o600)
            jwks_path.unlink(missing_ok=True)
        if not jwks_path.exists():
            jwk = public_jwk(_read_private(private_path).public_key())
            _write_atomic(jwks_path, json.dumps({"keys": [jwk]}, indent=2).encode() + b"\n", 0o644)
    return _read_keys(folder, private_path, jwks_path)


def _read_private(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _read_keys(folder: Path, private_path: Path, jwks_path: Path) -> DevKeys:
    kid = public_jwk(_read_private(private_path).public_key())["kid"]
    return DevKeys(folder=folder, private_key_path=private_path, jwks_path=jwks_path, kid=kid)


def sign(claims: dict[str, object], private_key: ec.EllipticCurvePrivateKey, kid: str | None) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, private_key, algorithm=ALGORITHM, headers=headers)


def claims_for(account: str, *, ttl: int = DEFAULT_TTL_SECONDS, now: int | None = None) -> dict[str, object]:
    problem = auth.account_problem(account)
    if problem:
        raise ValueError(f"account {problem}")
    issued = int(time.time()) if now is None else now
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": account,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": uuid.uuid4().hex,
    }


def mint_token(data_dir: Path, account: str, *, ttl: int = DEFAULT_TTL_SECONDS) -> str:
    """A development token for `account`, signed by the data folder's key (created if missing)."""
    keys = ensure_keys(data_dir)
    return sign(claims_for(account, ttl=ttl), keys.private_key(), keys.kid)
