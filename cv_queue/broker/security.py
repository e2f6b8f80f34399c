"""The secured local broker (`cv-queue broker start --security sasl_ssl`): listeners, TLS, SCRAM and the authorizer.

Layout of a secured node:
- clients connect to `SASL_SSL://127.0.0.1:<port>`, authenticating with SCRAM-SHA-512 over TLS.
- the brokers talk to each other on a separate listener, `INTERNAL://127.0.0.1:<port + 200>`, also SASL_SSL with
  SCRAM-SHA-512, as `cvq-admin` (a super user): nothing that carries records or credentials is in clear text, even
  between nodes. It is separate so that the client listener can present any certificate (an operator's own, or an
  expired one in a drill) while the brokers keep trusting each other: Kafka refuses to start when the inter-broker
  listener's certificate does not verify against its own truststore. With generated TLS both listeners use the same
  certificate; with `--ca/--cert/--key` the internal one keeps a project-generated CA and certificate.
- the KRaft controller listener stays PLAINTEXT on 127.0.0.1: KRaft cannot authenticate controllers with SCRAM
  (its credentials live in the very metadata log the controllers serve). A broker reaches its controllers as
  `User:ANONYMOUS`, which therefore is a super user; only the loopback controller port accepts that principal,
  the client listener never does.
- the KRaft `StandardAuthorizer` with `allow.everyone.if.no.acl.found=false`: a principal without an ACL for a
  resource is denied (apply the queue's ACLs with `cv-queue acls apply`).
"""

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cv_queue.broker.errors import BrokerError
from cv_queue.broker.scram import (
    ADMIN,
    CREDENTIALS_FILE,
    SCRAM_MECHANISM,
    ensure_credentials,
    format_arguments,
    read_credentials,
)
from cv_queue.broker.state import BrokerState
from cv_queue.broker.tls import TlsFiles, certificate_problem, generate_tls, import_tls

LISTENER = "SASL_SSL"
INTERNAL = "INTERNAL"
INTERNAL_PORT_OFFSET = 200  # above the client port; controllers are at +100
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
#: Environment a client of the secured broker needs, besides its own KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD.
CLIENT_ENV_PROTOCOL = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": SCRAM_MECHANISM}


class SecurityMode(StrEnum):
    PLAINTEXT = "plaintext"
    SASL_SSL = "sasl_ssl"


@dataclass(frozen=True)
class OwnTls:
    """An operator's own TLS files for the broker (all PEM; the key unencrypted)."""

    ca: Path
    certificate: Path
    key: Path

    @classmethod
    def from_dir(cls, tls_dir: Path) -> "OwnTls":
        """ca.pem, server.pem and server-key.pem in one folder."""
        return cls(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server-key.pem")


@dataclass(frozen=True)
class BrokerSecurity:
    """A secured cluster's TLS files and SCRAM users."""

    tls: TlsFiles
    credentials: dict[str, str]
    credentials_file: Path
    internal_tls: TlsFiles

    @classmethod
    def prepare(cls, data_root: Path, own_tls: OwnTls | None) -> "BrokerSecurity":
        """TLS material and users for a cluster in data_root: reused when already there, else made (or imported)."""
        tls_dir = data_root / "tls"
        if own_tls is not None:
            tls = import_tls(own_tls.ca, own_tls.certificate, own_tls.key, tls_dir)
            internal_dir = tls_dir / "internal"
            internal = TlsFiles.in_dir(internal_dir) if TlsFiles.in_dir(internal_dir).exist() \
                else generate_tls(internal_dir)
        else:
            tls = TlsFiles.in_dir(tls_dir) if TlsFiles.in_dir(tls_dir).exist() else generate_tls(tls_dir)
            internal = tls
        credentials_file = data_root / CREDENTIALS_FILE
        return cls(tls, ensure_credentials(credentials_file), credentials_file, internal)

    @classmethod
    def load(cls, ca_file: str, keystore_file: str, credentials_file: str) -> "BrokerSecurity":
        """What a recorded cluster was started with (restarts read it back, never regenerate it)."""
        ca = Path(ca_file)
        tls = TlsFiles(ca, Path(keystore_file).with_name("server.pem"), Path(keystore_file))
        if not tls.exist():
            raise BrokerError(f"The TLS files of the recorded secured cluster ({ca.parent}) are gone.",
                              "run `cv-queue broker stop` to forget it, then start a new one.")
        internal = TlsFiles.in_dir(ca.parent / "internal")
        return cls(tls, read_credentials(Path(credentials_file)), Path(credentials_file),
                   internal if internal.exist() else tls)

    def certificate_problem(self) -> str | None:
        return certificate_problem(self.tls.certificate)

    def format_arguments(self) -> list[str]:
        return format_arguments(self.credentials)

    def server_properties(self, client_port: int, controller_port: int) -> dict[str, object]:
        """The listener, TLS, SASL and authorizer lines of one node's server.properties (it holds the admin's
        password for inter-broker logins: the conf dir is private to its owner)."""
        internal_port = client_port + INTERNAL_PORT_OFFSET
        jaas = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{ADMIN}" password="{self.credentials[ADMIN]}";')
        lines: dict[str, object] = {
            "listeners": f"{LISTENER}://127.0.0.1:{client_port},{INTERNAL}://127.0.0.1:{internal_port},"
                         f"CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"{LISTENER}://127.0.0.1:{client_port},{INTERNAL}://127.0.0.1:{internal_port}",
            "inter.broker.listener.name": INTERNAL,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{LISTENER}:SASL_SSL,{INTERNAL}:SASL_SSL",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            "ssl.endpoint.identification.algorithm": "https",
            "ssl.client.auth": "none",
            "authorizer.class.name": AUTHORIZER,
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN};User:ANONYMOUS",
        }
        for listener, tls in ((LISTENER, self.tls), (INTERNAL, self.internal_tls)):
            prefix = f"listener.name.{listener.lower()}."
            lines.update({
                f"{prefix}{SCRAM_MECHANISM.lower()}.sasl.jaas.config": jaas,
                f"{prefix}ssl.keystore.type": "PEM",
                f"{prefix}ssl.keystore.location": str(tls.keystore),
                f"{prefix}ssl.truststore.type": "PEM",
                f"{prefix}ssl.truststore.location": str(tls.ca),
            })
        return lines

    def client_config(self, principal: str = ADMIN) -> dict[str, str]:
        """librdkafka properties to log in as `principal` (holds its password: never log the result)."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": principal,
            "sasl.password": self.credentials[principal],
            "ssl.ca.location": str(self.tls.ca),
        }

    def client_env(self, principal: str) -> dict[str, str]:
        """The KAFKA_* settings of a cv-queue client logging in as `principal`, without its password."""
        return {**CLIENT_ENV_PROTOCOL, "KAFKA_SASL_USERNAME": principal, "KAFKA_SSL_CA_LOCATION": str(self.tls.ca)}


def security_of(state: BrokerState) -> BrokerSecurity:
    """The security a recorded secured cluster runs with."""
    if not (state.ca_file and state.keystore_file and state.credentials_file):
        raise BrokerError("The recorded cluster is marked secured but its TLS and credential files are not recorded.",
                          "run `cv-queue broker stop`, then start it again.")
    return BrokerSecurity.load(state.ca_file, state.keystore_file, state.credentials_file)
