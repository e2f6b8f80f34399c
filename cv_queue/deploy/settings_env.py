"""The environment variables cv-queue reads its configuration from, derived from the settings models.

A Dagster run container (DockerRunLauncher) sees only the variables deploy/dagster.yaml forwards by name, and it
re-imports cv_queue.definitions and rebuilds its settings from them alone: a setting the file does not forward gives
the runs another value than the code server (a default job timeout, no LLM key). A hand-kept list drifts from the
model, so `run_env_vars()` derives it, and a test fails when the file's list differs from it.

The names are those pydantic-settings reads: each root's `env_prefix` (`KAFKA_`, `CVQ_`), and for a nested section
the section name, `env_nested_delimiter` (`__`) and the field name, upper case (pydantic-settings matches them
case-insensitively). One name per leaf field; a dict field (`CVQ_WORKER__HANDLER_OPTIONS`) is one JSON value. The
whole-section JSON form (`CVQ_WORKER='{...}'`) and a dict field's own sub-keys (`CVQ_WORKER__HANDLER_OPTIONS__X`)
are read too, but not forwarded: set the leaf variables instead.
"""

import typing
from collections.abc import Iterator

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from cv_queue.settings import KafkaConnection, QueueSettings

#: The settings roots, in the order of the configuration reference.
ROOTS: tuple[type[BaseSettings], ...] = (KafkaConnection, QueueSettings)

#: Read beside the model: the LLM evaluator's fallback when CVQ_LLM__API_KEY is unset (LLMSettings.api_key).
LLM_API_KEY_FALLBACK = "OPENAI_API_KEY"


def _is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation)


def _section(field: FieldInfo) -> type[BaseModel] | None:
    """The nested model a field holds, read through the nested delimiter; None for a leaf."""
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and not issubclass(annotation, BaseSettings):
        return annotation
    return None


def _leaves(model: type[BaseModel], prefix: str, delimiter: str) -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        section = _section(field)
        if section is not None:
            if not delimiter:  # without a nested delimiter pydantic-settings reads the section as one JSON value
                yield f"{prefix}{name.upper()}", field
                continue
            yield from _leaves(section, f"{prefix}{name.upper()}{delimiter}", delimiter)
        else:
            yield f"{prefix}{name.upper()}", field


def settings_fields() -> Iterator[tuple[str, FieldInfo]]:
    """(variable, field) of every leaf setting of the roots, in model order."""
    for root in ROOTS:
        config = root.model_config
        yield from _leaves(root, config.get("env_prefix") or "", config.get("env_nested_delimiter") or "")


def settings_env_vars() -> list[str]:
    """Every environment variable that sets a leaf of KafkaConnection or QueueSettings, in model order."""
    return [name for name, _ in settings_fields()]


def _beside_the_model() -> list[tuple[str, bool]]:
    """(name, secret) of the variables read outside the settings models: each principal's SASL credentials
    (KafkaResource reads them; the admin's are KafkaConnection's own) and the LLM key's fallback."""
    from cv_queue.defs.resources import SASL_ENV  # Dagster's resources own the per-principal variables

    model = set(settings_env_vars())
    pairs = [pair for user, password in SASL_ENV.values() for pair in ((user, False), (password, True))]
    return [(name, secret) for name, secret in pairs if name not in model] + [(LLM_API_KEY_FALLBACK, True)]


def secret_env_vars() -> list[str]:
    """The variables that hold secrets (SecretStr settings: passwords, the LLM API key, the alert webhook URL; the
    per-principal passwords; the LLM key's fallback): deployment files may name them, never give them a value."""
    return [name for name, field in settings_fields() if _is_secret(field)] + [
        name for name, secret in _beside_the_model() if secret]


def run_env_vars() -> list[str]:
    """What a Dagster run needs from the code server's environment to configure itself as the code server does:
    every settings variable and those read beside the model. The instance's own variables (Postgres storage,
    CVQ_RUN_LAUNCHER) are not settings and are not included."""
    return settings_env_vars() + [name for name, _ in _beside_the_model()]
