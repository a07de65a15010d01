"""A self-signed certificate for tests of the public listener's TLS."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from meshkit.launcher.envoy import TlsFiles


def self_signed(folder: Path, host: str = "localhost") -> TlsFiles:
    """A key and a certificate for `host` (valid a day), as PEM files in `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "tls.crt", folder / "tls.key")
    files.certificate_chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.private_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return files
