"""Dagster resources: where the broker is (KafkaResource) and how the queue is shaped (QueueResource).

Both are thin: they hold config that shows in the launchpad and hand out what the broker layer builds.
Defaults come from the broker layer's own settings (and so from the same environment variables), so a
value is documented once, in cv_queue/settings/.
"""

import json
import os
from enum import StrEnum
from typing import Any

import dagster as dg
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from pydantic import Field, SecretStr

from cv_queue.defs.alerts_resource import AlertsResource
from cv_queue.defs.defaults import DEFAULTS
from cv_queue.kafka.client.auth import KafkaAuthError, KafkaAuthorizationError, check_access
from cv_queue.kafka.client.client_log import CLIENT_LOG
from cv_queue.kafka.client.clients import admin_client, assigned_consumer, job_producer
from cv_queue.settings import KafkaConnection, QueueSettings

_CONN = KafkaConnection.model_fields


def _field(model: type, name: str, default: Any) -> Any:
    return Field(default=default, description=model.model_fields[name].description)


class Principal(StrEnum):
    """Who a Dagster client acts as: each kind of run gets its own least-privilege credentials."""

    ADMIN = "admin"  # topic assets, checks and sensors: provisioning, ACLs, offsets
    WORKER = "worker"  # partition_worker runs
    REPLAYER = "replayer"  # reprocess_dlq runs


#: The environment variables of each principal's SASL credentials. The admin's are the CLI's own variables, so a
#: deployment with a single principal sets only those; a principal whose username is unset uses the admin's.
SASL_ENV = {
    Principal.ADMIN: ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"),
    Principal.WORKER: ("KAFKA_WORKER_SASL_USERNAME", "KAFKA_WORKER_SASL_PASSWORD"),
    Principal.REPLAYER: ("KAFKA_REPLAYER_SASL_USERNAME", "KAFKA_REPLAYER_SASL_PASSWORD"),
}
SECRET_FIELDS = ("sasl_password", "worker_sasl_password", "replayer_sasl_password", "ssl_key_password")
_SECRET_NOTE = " Secret: set it only as a dg.EnvVar, so the UI and run config show the variable's name."


class KafkaResource(dg.ConfigurableResource):
    """The broker connection: bootstrap servers, client id, topic namespace and security settings.

    SASL credentials are per principal: `sasl_*` (the admin: topic assets, checks, sensors), `worker_sasl_*`
    (worker runs) and `replayer_sasl_*` (reprocess_dlq runs). Secrets (the passwords, the key password) come only
    as `dg.EnvVar`, so the UI, the Launchpad and the run config show the variable's name, never the value.
    """

    bootstrap_servers: str = Field(description=_CONN["bootstrap_servers"].description)
    client_id: str = Field("cv-queue-dagster", description=_CONN["client_id"].description)
    namespace: str = Field("", description=QueueSettings.model_fields["namespace"].description)
    security_protocol: str = Field("PLAINTEXT", description=_CONN["security_protocol"].description)
    sasl_mechanism: str | None = Field(None, description=_CONN["sasl_mechanism"].description)
    sasl_username: str | None = Field(None, description="SASL username of the admin principal (topic assets, "
                                                        "checks, sensors), and of any principal without its own.")
    sasl_password: str | None = Field(None, description="SASL password of the admin principal." + _SECRET_NOTE)
    worker_sasl_username: str | None = Field(None, description="SASL username of worker runs (unset: the admin's).")
    worker_sasl_password: str | None = Field(None, description="SASL password of worker runs." + _SECRET_NOTE)
    replayer_sasl_username: str | None = Field(None, description="SASL username of reprocess_dlq runs (unset: the "
                                                                 "admin's).")
    replayer_sasl_password: str | None = Field(None, description="SASL password of reprocess_dlq runs." + _SECRET_NOTE)
    ssl_ca_location: str | None = Field(None, description=_CONN["ssl_ca_location"].description)
    ssl_certificate_location: str | None = Field(None, description=_CONN["ssl_certificate_location"].description)
    ssl_key_location: str | None = Field(None, description=_CONN["ssl_key_location"].description)
    ssl_key_password: str | None = Field(None, description=_CONN["ssl_key_password"].description + _SECRET_NOTE)

    def _credentials(self, principal: Principal) -> tuple[str | None, str | None]:
        own = {Principal.WORKER: (self.worker_sasl_username, self.worker_sasl_password),
               Principal.REPLAYER: (self.replayer_sasl_username, self.replayer_sasl_password)}.get(principal)
        if own is not None and own[0]:
            return own
        return self.sasl_username, self.sasl_password

    def connection(self, principal: Principal = Principal.ADMIN) -> KafkaConnection:
        """The broker layer's connection settings, authenticated as `principal`."""
        username, password = self._credentials(principal)
        for secret in (password, self.ssl_key_password):
            if secret:
                CLIENT_LOG.add_secret(secret)  # redacted from any client log line that might echo it
        return KafkaConnection(
            bootstrap_servers=self.bootstrap_servers, client_id=self.client_id,
            security_protocol=self.security_protocol, sasl_mechanism=self.sasl_mechanism,
            sasl_username=username, sasl_password=SecretStr(password) if password else None,
            ssl_ca_location=self.ssl_ca_location, ssl_certificate_location=self.ssl_certificate_location,
            ssl_key_location=self.ssl_key_location,
            ssl_key_password=SecretStr(self.ssl_key_password) if self.ssl_key_password else None,
        )

    def check_access(self, principal: Principal) -> KafkaConnection:
        """The principal's connection, once the broker accepted its login and TLS (a dg.Failure naming the cause and
        the variables to fix within seconds otherwise, instead of librdkafka retrying for ever)."""
        conn = self.connection(principal)
        try:
            check_access(conn)
        except KafkaAuthError as exc:
            raise access_failure(exc, principal) from exc
        return conn

    def admin(self) -> AdminClient:
        return admin_client(self.connection(Principal.ADMIN))

    def producer(self) -> Producer:
        return job_producer(self.connection(Principal.ADMIN))

    def consumer(self, settings: QueueSettings, group_id: str, role: str) -> Consumer:
        return assigned_consumer(self.connection(Principal.ADMIN), settings, group_id, role)

    @classmethod
    def from_env(cls) -> "KafkaResource":
        """Built from the environment the way the broker layer reads it; secrets stay EnvVar references.

        An EnvVar that points at an unset variable fails the run even for an optional field, so only
        variables that are set become EnvVars.
        """
        kwargs: dict[str, Any] = {
            "bootstrap_servers": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", _CONN["bootstrap_servers"].default),
            "namespace": DEFAULTS.namespace,
        }
        for name in ("security_protocol", "sasl_mechanism", "ssl_ca_location", "ssl_certificate_location",
                     "ssl_key_location"):
            if os.environ.get(f"KAFKA_{name.upper()}"):
                kwargs[name] = os.environ[f"KAFKA_{name.upper()}"]
        for principal, (user_var, password_var) in SASL_ENV.items():
            prefix = "" if principal == Principal.ADMIN else f"{principal.value}_"
            if os.environ.get(user_var):
                kwargs[f"{prefix}sasl_username"] = os.environ[user_var]
            if os.environ.get(password_var):
                kwargs[f"{prefix}sasl_password"] = dg.EnvVar(password_var)
        if os.environ.get("KAFKA_SSL_KEY_PASSWORD"):
            kwargs["ssl_key_password"] = dg.EnvVar("KAFKA_SSL_KEY_PASSWORD")
        return cls(**kwargs)


def access_failure(exc: KafkaAuthError | KafkaAuthorizationError, principal: Principal) -> dg.Failure:
    """A run's failure for a refused login, TLS handshake or ACL: the broker layer's message, which names the cause,
    and the variables this kind of run logs in with (Dagster's differ from the CLI's for workers and replays)."""
    user_var, password_var = SASL_ENV[principal]
    return dg.Failure(
        description=f"{exc} In Dagster this run logs in as the {principal.value} principal: {user_var} and "
                    f"{password_var} (the kafka resource), over KAFKA_SECURITY_PROTOCOL with KAFKA_SSL_CA_LOCATION.",
        metadata={"cause": type(exc).__name__, "principal": principal.value, "username_variable": user_var},
        allow_retries=False,
    )


_W, _R, _P, _T, _L = (type(DEFAULTS.worker), type(DEFAULTS.retry), type(DEFAULTS.replay), type(DEFAULTS.topics),
                      type(DEFAULTS.llm))
LLM_KEY_VAR = "CVQ_LLM__API_KEY"


class QueueResource(dg.ConfigurableResource):
    """The queue's shape and policies. Unset values fall back to QueueSettings (and its CVQ_* variables)."""

    partitions: int = _field(_T, "partitions", DEFAULTS.topics.partitions)
    replication_factor: int = _field(_T, "replication_factor", DEFAULTS.topics.replication_factor)
    partitions_per_worker: int = _field(_T, "partitions_per_worker", DEFAULTS.topics.partitions_per_worker)
    apply_acls: bool = _field(_T, "apply_acls", DEFAULTS.topics.apply_acls)
    max_in_flight: int = _field(_W, "max_in_flight", DEFAULTS.worker.max_in_flight)
    commit_interval_ms: int = _field(_W, "commit_interval_ms", DEFAULTS.worker.commit_interval_ms)
    handler: str = _field(_W, "handler", DEFAULTS.worker.handler)
    handler_options_json: str = Field(json.dumps(DEFAULTS.worker.handler_options),
                                      description="JSON object of handler keyword arguments.")
    inprocess_tries: int = _field(_R, "inprocess_tries", DEFAULTS.retry.inprocess_tries)
    retry_base_delay_ms: int = _field(_R, "base_delay_ms", DEFAULTS.retry.base_delay_ms)
    retry_multiplier: float = _field(_R, "multiplier", DEFAULTS.retry.multiplier)
    retry_max_delay_ms: int = _field(_R, "max_delay_ms", DEFAULTS.retry.max_delay_ms)
    retry_max_attempts: int = _field(_R, "max_attempts", DEFAULTS.retry.max_attempts)
    replay_auto_categories: list[str] = _field(_P, "auto_categories",
                                               [c.value for c in DEFAULTS.replay.auto_categories])
    replay_cooldown_s: float = _field(_P, "cooldown_s", DEFAULTS.replay.cooldown_s)
    replay_max_replays: int = _field(_P, "max_replays", DEFAULTS.replay.max_replays)
    replay_batch_size: int = _field(_P, "batch_size", DEFAULTS.replay.batch_size)
    replay_retry_max: int = _field(_P, "retry_max", DEFAULTS.replay.retry_max)
    replay_retry_delay_s: float = _field(_P, "retry_delay_s", DEFAULTS.replay.retry_delay_s)
    replay_retry_backoff: str = _field(_P, "retry_backoff", DEFAULTS.replay.retry_backoff)
    replay_retry_jitter: bool = _field(_P, "retry_jitter", DEFAULTS.replay.retry_jitter)
    llm_base_url: str = _field(_L, "base_url", DEFAULTS.llm.base_url)
    llm_model: str = _field(_L, "model", DEFAULTS.llm.model)
    llm_api_key: str | None = Field(None, description="The LLM API key: an EnvVar (CVQ_LLM__API_KEY), never a value.")
    llm_temperature: float = _field(_L, "temperature", DEFAULTS.llm.temperature)
    llm_max_tokens: int = _field(_L, "max_tokens", DEFAULTS.llm.max_tokens)
    llm_request_timeout_s: float = _field(_L, "request_timeout_s", DEFAULTS.llm.request_timeout_s)
    llm_max_concurrent_requests: int = _field(_L, "max_concurrent_requests", DEFAULTS.llm.max_concurrent_requests)

    def settings(self, kafka: KafkaResource) -> QueueSettings:
        """The broker layer's settings: environment defaults overlaid with this resource's values, validated."""
        merged = QueueSettings().model_dump()
        merged["namespace"] = kafka.namespace
        merged["topics"].update(partitions=self.partitions, replication_factor=self.replication_factor,
                                partitions_per_worker=self.partitions_per_worker, apply_acls=self.apply_acls)
        merged["worker"].update(max_in_flight=self.max_in_flight, commit_interval_ms=self.commit_interval_ms,
                                handler=self.handler, handler_options=json.loads(self.handler_options_json or "{}"))
        merged["retry"].update(inprocess_tries=self.inprocess_tries, base_delay_ms=self.retry_base_delay_ms,
                               multiplier=self.retry_multiplier, max_delay_ms=self.retry_max_delay_ms,
                               max_attempts=self.retry_max_attempts)
        merged["replay"].update(auto_categories=self.replay_auto_categories, cooldown_s=self.replay_cooldown_s,
                                max_replays=self.replay_max_replays, batch_size=self.replay_batch_size,
                                retry_max=self.replay_retry_max, retry_delay_s=self.replay_retry_delay_s,
                                retry_backoff=self.replay_retry_backoff, retry_jitter=self.replay_retry_jitter)
        merged["llm"].update(base_url=self.llm_base_url, model=self.llm_model, temperature=self.llm_temperature,
                             max_tokens=self.llm_max_tokens, request_timeout_s=self.llm_request_timeout_s,
                             max_concurrent_requests=self.llm_max_concurrent_requests)
        if self.llm_api_key:
            merged["llm"]["api_key"] = SecretStr(self.llm_api_key)
        return QueueSettings(**merged)

    @classmethod
    def from_env(cls) -> "QueueResource":
        """Defaults from the environment; the LLM key, when set, stays an EnvVar reference (the UI shows its name)."""
        if os.environ.get(LLM_KEY_VAR):
            return cls(llm_api_key=dg.EnvVar(LLM_KEY_VAR))
        return cls()


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {"kafka": KafkaResource.from_env(), "queue": QueueResource.from_env(), "alerts": AlertsResource.from_env()}
