"""Authentication, TLS and authorization failures: detected early, named with the setting to fix, never a hang.

librdkafka treats a rejected login or a failed TLS handshake as a passing broker problem: it reports it through
`error_cb` (`_AUTHENTICATION`, `_SSL`, `_TRANSPORT` "SSL handshake failed") and retries for ever, while the call
that wanted the broker waits out its own timeout, and an idempotent producer's flush or `init_transactions` waits
longer still. So every entry point that talks to a secured broker first calls `check_access`, which asks for
metadata in short rounds and raises `KafkaAuthError` as soon as such a report arrives (within seconds). The
CLI maps it to exit code 6 (EXIT_AUTH). A TLS failure is then diagnosed from the broker's certificate itself
(expired, not issued by the CA in KAFKA_SSL_CA_LOCATION, not for this host), which librdkafka does not say.

A principal that logs in but lacks an ACL gets `KafkaAuthorizationError`, naming the operation and the resource
that were denied (exit code 7, EXIT_DENIED).

No message here contains a password: they are built from the settings' names and the broker's own text, and the
password is a SecretStr until it is handed to librdkafka.
"""

import contextlib
import logging
import socket
import ssl
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Producer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ec import ECDSA, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from cv_queue.settings import KafkaConnection

EXIT_AUTH = 6
EXIT_DENIED = 7
CHECK_TIMEOUT_S = 15.0

_AUTHORIZATION_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: ("TOPIC", "read, write or describe"),
    KafkaError.GROUP_AUTHORIZATION_FAILED: ("GROUP", "read or describe"),
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: ("TRANSACTIONAL_ID", "write"),
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: ("CLUSTER", "alter, create or idempotent write"),
}


class KafkaAuthError(RuntimeError):
    """The broker refused the login or the TLS handshake failed; the message says why and which setting to fix."""


class KafkaAuthorizationError(RuntimeError):
    """The broker denied an operation on a resource to the logged-in principal (a missing ACL)."""

    def __init__(self, operation: str, resource_type: str, resource: str, principal: str | None,
                 detail: str = "") -> None:
        self.operation, self.resource_type, self.resource = operation, resource_type, resource
        self.principal = principal
        who = f"principal User:{principal}" if principal else "the (unauthenticated) client"
        super().__init__(
            f"authorization denied: {who} may not {operation} on {resource_type} {resource!r}"
            f"{f' ({detail})' if detail else ''}. Grant it (`cv-queue acls apply` as an admin applies the queue's "
            "ACLs) or log in as the principal that holds it (KAFKA_SASL_USERNAME)."
        )


def authorization_code(err: KafkaError | KafkaException | BaseException) -> int | None:
    """The authorization error code inside `err`, if it is one."""
    if isinstance(err, KafkaException) and err.args and isinstance(err.args[0], KafkaError):
        err = err.args[0]
    if isinstance(err, KafkaError) and err.code() in _AUTHORIZATION_CODES:
        return err.code()
    return None


def denied(err: KafkaError | KafkaException, conn: KafkaConnection, resource: str, operation: str | None = None
           ) -> KafkaAuthorizationError:
    """A KafkaAuthorizationError for an authorization failure on `resource` (the caller knows which it touched)."""
    code = authorization_code(err)
    resource_type, operations = _AUTHORIZATION_CODES.get(code or 0, ("RESOURCE", "access"))
    return KafkaAuthorizationError(operation or operations, resource_type, resource, conn.sasl_username,
                                   str(err.args[0].str() if isinstance(err, KafkaException) else err.str()))


def _login_failure(err: KafkaError, conn: KafkaConnection) -> str | None:
    text = err.str()
    code = err.code()
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        if "invalid credentials" in text or "Authentication failed" in text:
            return (f"SASL authentication as {conn.sasl_username!r} ({conn.sasl_mechanism}) was rejected by "
                    f"{conn.bootstrap_servers}: a wrong password or an unknown user (the broker does not say "
                    "which). Check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD.")
        return (f"SASL authentication as {conn.sasl_username!r} failed: {text}. Check KAFKA_SASL_MECHANISM, "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD.")
    if code == KafkaError._SSL:
        return TLS_REFUSED
    # librdkafka reports a connection dropped during the handshake as "SSL handshake failed: Disconnected"
    # (_TRANSPORT): a plaintext listener does that, but so does a broker restarting. diagnose_tls tells them apart.
    if code == KafkaError._TRANSPORT and "SSL" in text:
        return TLS_DROPPED if _is_disconnect(text) else TLS_REFUSED
    return None


TLS_REFUSED, TLS_DROPPED = "TLS", "TLS dropped"


def _is_disconnect(text: str) -> bool:
    lowered = text.lower()
    return any(sign in lowered for sign in ("disconnected", "connection refused", "connection reset", "timed out"))


def _first_host(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",", maxsplit=1)[0].strip().rpartition(":")
    return host.strip("[]"), int(port)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    try:
        if isinstance(key, RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                       cert.signature_hash_algorithm)  # type: ignore[arg-type]
        elif isinstance(key, EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]
        else:
            return cert.issuer == ca.subject
    except Exception:
        return False
    return True


def diagnose_tls(conn: KafkaConnection, timeout_s: float = 5.0,  # noqa: PLR0911 - one return per cause
                 dropped: bool = False) -> str | None:
    """Why the broker's certificate is refused, read from the certificate itself (fetched without verifying it);
    None when nothing definite was found: the broker could not be reached, or (`dropped`: librdkafka only saw the
    connection drop) its certificate looks fine, so it is not known to be a TLS problem."""
    ca_setting = conn.ssl_ca_location
    if ca_setting and not Path(ca_setting).is_file():
        return f"the CA file {ca_setting} does not exist. Check KAFKA_SSL_CA_LOCATION."
    host, port = _first_host(conn.bootstrap_servers)
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # only to read the certificate we are about to judge
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLError as exc:  # reachable, but no TLS there at all (a plaintext listener, another protocol)
        return f"the TLS handshake with {host}:{port} failed ({exc}). Check KAFKA_SECURITY_PROTOCOL and " \
               "KAFKA_SSL_CA_LOCATION."
    except OSError:  # refused, reset, timed out: a broker restarting looks like this too
        return None
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    now = datetime.now(UTC)
    if cert.not_valid_after_utc < now:
        return (f"the broker's certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC "
                f"(subject {cert.subject.rfc4514_string()}). Renew the broker's certificate; clients cannot accept it "
                "whatever KAFKA_SSL_CA_LOCATION says.")
    if cert.not_valid_before_utc > now:
        return f"the broker's certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC " \
               "(check the clocks)."
    if ca_setting:
        with warnings.catch_warnings():  # system bundles hold old CAs cryptography warns about; none is ours
            warnings.simplefilter("ignore")
            cas = x509.load_pem_x509_certificates(Path(ca_setting).read_bytes())
        if not any(_issued_by(cert, ca) for ca in cas):
            return (f"the broker's certificate (issuer {cert.issuer.rfc4514_string()}) was not issued by a CA in "
                    f"KAFKA_SSL_CA_LOCATION={ca_setting}: a wrong CA file. Point KAFKA_SSL_CA_LOCATION at the "
                    "broker's CA.")
    else:
        return (f"the broker's certificate (issuer {cert.issuer.rfc4514_string()}) is not trusted by the system CAs. "
                "Set KAFKA_SSL_CA_LOCATION to the broker's CA file.")
    if dropped:
        return None
    return (f"the broker's certificate (subject {cert.subject.rfc4514_string()}) was refused: it may not name the host "
            f"{host}. Use a bootstrap address the certificate names, or check KAFKA_SSL_CA_LOCATION.")


def check_access(conn: KafkaConnection, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Raise KafkaAuthError if the broker refuses this connection's login or TLS; return once metadata is read.

    A plaintext connection has nothing to check. When the broker does not answer at all within `timeout_s`, this
    returns too: an unreachable broker is the callers' business, as it was before security existed.
    """
    if conn.security_protocol.upper() == "PLAINTEXT":
        return
    if conn.ssl_ca_location and not Path(conn.ssl_ca_location).is_file():
        raise KafkaAuthError(f"the CA file KAFKA_SSL_CA_LOCATION={conn.ssl_ca_location} does not exist. Point "
                             "KAFKA_SSL_CA_LOCATION at the broker's CA certificate (PEM).")
    reports: list[KafkaError] = []
    conf = conn.client_config()
    quiet = logging.getLogger("cv_queue.kafka.auth.check")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    conf.update({"client.id": f"{conn.client_id}-access-check", "error_cb": reports.append, "logger": quiet,
                 "log_level": 0})
    try:
        probe = Producer(conf)
    except KafkaException as exc:  # e.g. an unreadable CA file, an unknown mechanism: refused at construction
        raise KafkaAuthError(f"the Kafka client cannot be configured for {conn.security_protocol}: {exc.args[0]}. "
                             "Check KAFKA_SSL_CA_LOCATION, KAFKA_SASL_MECHANISM and KAFKA_SECURITY_PROTOCOL.") from None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaException):
                probe.list_topics(timeout=1.0)
                return
            probe.poll(0)  # serves error_cb
            for err in reports:
                failure = _login_failure(err, conn)
                if failure in (TLS_REFUSED, TLS_DROPPED):
                    cause = diagnose_tls(conn, dropped=failure == TLS_DROPPED)
                    if cause is None:  # not reachable now: keep probing until the deadline, as for any outage
                        continue
                    raise KafkaAuthError(f"TLS with {conn.bootstrap_servers} failed: {cause}")
                if failure is not None:
                    raise KafkaAuthError(failure)
            reports.clear()
    finally:
        probe.flush(0)
