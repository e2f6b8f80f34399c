"""TLS material of the secured local broker: a private CA and a server certificate for 127.0.0.1 and localhost.

Kafka 4.1 reads PEM directly (`ssl.keystore.type=PEM`): the keystore is one file holding the unencrypted PKCS#8
private key followed by the certificate chain, and the truststore is the CA certificate. Clients trust the same
`ca.pem` (librdkafka's `ssl.ca.location`, i.e. KAFKA_SSL_CA_LOCATION) and verify the broker's name, so the server
certificate carries both SANs the local listeners are reached by.

`generate_tls` makes a fresh CA and server certificate; `import_tls` takes an operator's own CA, certificate and
key (any PEM key, PKCS#1 or PKCS#8, unencrypted) and writes the keystore Kafka wants from them. The CA's private key
is never written: nothing here issues certificates later, so it is one secret less on disk.
"""

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cv_queue.broker.errors import BrokerError

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEYSTORE_FILE = "server-keystore.pem"  # key + chain, what ssl.keystore.location names
SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1",)
VALIDITY = timedelta(days=825)  # the longest lifetime common TLS stacks accept for a server certificate


@dataclass(frozen=True)
class TlsFiles:
    """Where a broker's TLS material lives."""

    ca: Path
    certificate: Path
    keystore: Path

    @classmethod
    def in_dir(cls, tls_dir: Path) -> "TlsFiles":
        return cls(tls_dir / CA_FILE, tls_dir / CERT_FILE, tls_dir / KEYSTORE_FILE)

    def exist(self) -> bool:
        return self.ca.is_file() and self.certificate.is_file() and self.keystore.is_file()


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cv-queue local broker"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(expired: bool) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    if expired:  # for tests and drills: a certificate whose lifetime ended yesterday
        return now - timedelta(days=30), now - timedelta(days=1)
    return now - timedelta(minutes=5), now + VALIDITY  # a little backdated: clocks of clients may lag


def _ca_certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    not_before, not_after = _validity(expired=False)
    name = _name("cv-queue local CA")
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(key: rsa.RSAPrivateKey, ca: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes,
                        expired: bool) -> x509.Certificate:
    not_before, not_after = _validity(expired)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
    return (
        x509.CertificateBuilder().subject_name(_name("cv-queue broker")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # clientAuth too: a broker is the client of the other brokers on the inter-broker listener.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, never readable by others even for a moment."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write(files: TlsFiles, ca_pem: bytes, chain_pem: bytes, key: PrivateKeyTypes) -> TlsFiles:
    files.ca.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    files.ca.write_bytes(ca_pem)
    files.certificate.write_bytes(chain_pem)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_private(files.keystore, key_pem + chain_pem)
    return files


def generate_tls(tls_dir: Path, expired: bool = False) -> TlsFiles:
    """A new CA and a server certificate for 127.0.0.1/localhost signed by it, written into tls_dir.

    `expired=True` makes a server certificate that is already past its end date (the CA stays valid), to see
    how clients fail against one.
    """
    ca_key = _new_key()
    ca = _ca_certificate(ca_key)
    key = _new_key()
    cert = _server_certificate(key, ca, ca_key, expired)
    return _write(TlsFiles.in_dir(tls_dir), _pem(ca), _pem(cert) + _pem(ca), key)


def _read(path: Path, what: str, flag: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise BrokerError(f"Cannot read the {what} {path}: {exc.strerror}.", f"pass a readable PEM file as {flag}.") \
            from exc


def import_tls(ca: Path, certificate: Path, key: Path, tls_dir: Path) -> TlsFiles:
    """Use an operator's own CA, server certificate (chain) and unencrypted private key, all PEM.

    The key is rewritten as PKCS#8 (the only form Kafka's PEM keystore reads without a key password) into the
    keystore file, next to the chain; the originals are not modified.
    """
    ca_pem = _read(ca, "CA certificate", "--ca")
    chain_pem = _read(certificate, "server certificate", "--cert")
    key_bytes = _read(key, "private key", "--key")
    try:
        x509.load_pem_x509_certificates(ca_pem)
        chain = x509.load_pem_x509_certificates(chain_pem)
        private_key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError) as exc:
        raise BrokerError(f"The TLS files given are not usable PEM: {exc}.",
                          "pass PEM files; the private key must not be encrypted.") from exc
    if _public_der(chain[0].public_key()) != _public_der(private_key.public_key()):
        raise BrokerError("The private key given with --key does not belong to the certificate given with --cert.",
                          "pass the key the certificate was issued for.")
    return _write(TlsFiles.in_dir(tls_dir), ca_pem, chain_pem, private_key)


def _public_der(public_key: object) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def certificate_problem(certificate: Path) -> str | None:
    """Why clients will refuse this server certificate before any byte is sent (expired, not yet valid), or None."""
    cert = x509.load_pem_x509_certificates(certificate.read_bytes())[0]
    now = datetime.now(UTC)
    if cert.not_valid_after_utc < now:
        return f"the server certificate {certificate} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if cert.not_valid_before_utc > now:
        return f"the server certificate {certificate} is not valid before {cert.not_valid_before_utc:%Y-%m-%d} UTC"
    return None
