"""Typed settings (pydantic-settings): environment variables ``KMSBRIDGE_*``, nested with ``__``.

One place turns them into librdkafka's dotted keys (:meth:`KafkaSettings.librdkafka`). Secrets are
``SecretStr`` (``repr()`` never shows them); they come from the environment or from ``*_FILE``
settings that name a mounted secret file. A bad setting stops start-up with a message naming it
(:func:`load_settings`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ApiSettings",
    "ExecutorSettings",
    "KafkaSettings",
    "KmsSettings",
    "Settings",
    "SettingsError",
    "TextLimitSettings",
    "TopicSettings",
    "load_settings",
]

ENV_PREFIX = "KMSBRIDGE_"


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


class KafkaSettings(BaseModel):
    """librdkafka client settings. Known keys are typed; any other ``KMSBRIDGE_KAFKA__X_Y`` passes
    through as ``x.y`` so every librdkafka option (SASL, SSL, tuning) is reachable."""

    model_config = ConfigDict(extra="allow")

    bootstrap_servers: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None

    @model_validator(mode="after")
    def _hide_passthrough_secrets(self) -> KafkaSettings:
        # pass-through keys such as ssl.keystore.password or sasl.oauthbearer.client.secret are secrets too
        extra = self.model_extra or {}
        for name, value in extra.items():
            if isinstance(value, str) and any(word in name.lower() for word in ("password", "secret")):
                extra[name] = SecretStr(value)
        return self

    def librdkafka(self) -> dict[str, str]:
        """The one mapping from our names to librdkafka's dotted keys (secrets revealed here only)."""
        out: dict[str, str] = {}
        data: dict[str, Any] = dict(self.__dict__)
        data.update(self.model_extra or {})
        for name, value in data.items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[name.lower().replace("_", ".")] = str(value)
        return out


class TopicSettings(BaseModel):
    subscriptions: str = "crm.subscriptions"
    communications: str = "crm.communications"
    requests: str = "kms.requests"
    commands: str = "kms.commands"
    results: str = "kms.results"
    reconcile_requests: str = "reconcile.requests"
    reconcile_reports: str = "reconcile.reports"
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    dlq_suffix: str = ".dlq"


class KmsSettings(BaseModel):
    endpoint: str = "http://127.0.0.1:8089/kms"
    token: SecretStr | None = None
    token_file: Path | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)
    verify_tls: bool = True
    ca_file: Path | None = None
    max_connections: int = Field(default=100, ge=1)

    def resolved_token(self) -> SecretStr:
        if self.token is not None:
            return self.token
        if self.token_file is not None:
            try:
                return SecretStr(self.token_file.read_text().strip())
            except OSError as exc:
                raise SettingsError(f"{ENV_PREFIX}KMS__TOKEN_FILE: cannot read {self.token_file}: {exc}") from exc
        raise SettingsError(f"{ENV_PREFIX}KMS__TOKEN (or {ENV_PREFIX}KMS__TOKEN_FILE) is required to call the KMS")

    def verify(self) -> bool | str:
        if not self.verify_tls:
            return False
        return str(self.ca_file) if self.ca_file else True


class ExecutorSettings(BaseModel):
    max_inflight: int = Field(default=64, ge=1, description="KMS calls in flight at once")
    max_buffered: int = Field(default=2000, ge=1, description="commands taken from Kafka, not yet done")
    retry_initial_seconds: float = Field(default=0.2, gt=0)
    retry_max_seconds: float = Field(default=5.0, gt=0)
    attempt_budget: int = Field(default=6, ge=1, description="attempts per command while the breaker is closed")
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_probe_seconds: float = Field(default=1.0, gt=0)
    prefetch_kbytes: int = Field(default=8192, ge=1024, description="librdkafka read-ahead of the commands topic")


class TranslatorSettings(BaseModel):
    batch_size: int = Field(default=500, ge=1, le=100_000, description="messages per transaction at most")
    batch_seconds: float = Field(default=0.02, gt=0, le=10, description="longest wait to fill a batch")


class TextLimitSettings(BaseModel):
    ansi_max_chars: int = Field(default=1024, ge=1)
    unicode_max_units: int = Field(default=512, ge=1, description="UTF-16 code units")
    raw_max_bytes: int = Field(default=1024, ge=1)


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: list[SecretStr] = Field(default_factory=list)
    api_keys_file: Path | None = None
    wait_seconds: float = Field(default=10.0, gt=0, description="bound of process_immediately")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", case_sensitive=False
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topic_prefix: str = ""
    topics: TopicSettings = Field(default_factory=TopicSettings)
    group_prefix: str = "kmsbridge"
    group_instance_id: str | None = Field(
        default=None, description="static membership id; defaults to $POD_NAME when set"
    )
    database_url: str = "sqlite:///var/kmsbridge.db"
    schema_registry_url: str | None = None
    provider_file: Path = Path("provider.yaml")
    kms: KmsSettings = Field(default_factory=KmsSettings)
    translator: TranslatorSettings = Field(default_factory=TranslatorSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    text_limits: TextLimitSettings = Field(default_factory=TextLimitSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 = no metrics server")
    health_ttl_seconds: float = Field(default=30.0, gt=0)
    lag_interval_seconds: float = Field(default=15.0, gt=0, description="refresh of the consumer lag gauges")
    shutdown_grace_seconds: float = Field(default=20.0, gt=0)
    max_message_bytes: int = Field(default=1_000_000, ge=1024)
    max_future_skew_seconds: float = Field(default=86_400.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("must be an SQLAlchemy URL such as sqlite:///var/kmsbridge.db")
        return value

    def topic(self, name: str) -> str:
        """Full topic name for a logical name of :class:`TopicSettings` (prefix applied)."""
        return f"{self.topic_prefix}{getattr(self.topics, name)}"

    def dlq(self, topic: str) -> str:
        return f"{topic}{self.topics.dlq_suffix}"

    def all_topics(self) -> list[str]:
        names = ["subscriptions", "communications", "requests", "commands", "results",
                 "reconcile_requests", "reconcile_reports"]
        base = [self.topic(n) for n in names]
        inputs = [self.topic(n) for n in ("subscriptions", "communications", "requests", "commands",
                                          "reconcile_requests")]
        return base + [self.dlq(t) for t in inputs]

    def group_id(self, process: str) -> str:
        return f"{self.group_prefix}-{process}"

    def instance_id(self, process: str) -> str | None:
        base = self.group_instance_id or os.environ.get("POD_NAME")
        return f"{base}-{process}" if base else None

    def kafka_config(self) -> dict[str, str]:
        config = self.kafka.librdkafka()
        if "bootstrap.servers" not in config:
            raise SettingsError(f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS is required (e.g. 127.0.0.1:9092)")
        return config

    def api_keys(self) -> list[SecretStr]:
        keys = list(self.api.api_keys)
        if self.api.api_keys_file is not None:
            try:
                lines = self.api.api_keys_file.read_text().splitlines()
            except OSError as exc:
                raise SettingsError(f"{ENV_PREFIX}API__API_KEYS_FILE: cannot read: {exc}") from exc
            keys += [SecretStr(line.strip()) for line in lines if line.strip()]
        return keys


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise :class:`SettingsError` naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = "__".join(str(p) for p in err["loc"]).upper()
            problems.append(f"{ENV_PREFIX}{path}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
