"""Typed settings (pydantic-settings): environment variables ``KMSBRIDGE_*``, nested with ``__``.

One place turns them into librdkafka's dotted keys (:meth:`KafkaSettings.librdkafka`). Secrets are
``SecretStr`` (``repr()`` never shows them); they come from the environment or from ``*_FILE``
settings that name a mounted secret file. URLs that may hold credentials (the database, the Schema
Registry) are :class:`SecretUrl`: ``repr()`` and ``str()`` show them with the password masked. A
bad setting stops start-up with a message naming it (:func:`load_settings`), never quoting a value.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from kmsbridge.errors import SettingsError
from kmsbridge.settings_registry import SchemaRegistrySettings
from kmsbridge.settings_request_log import RequestLogSettings
from producers.topics import TopicPolicy
from schemas.pin_seal import PinKeyError, PinKeyRing

__all__ = [
    "ApiSettings",
    "ClassRateLimits",
    "ExecutorSettings",
    "KafkaSettings",
    "KmsSettings",
    "PinKeySettings",
    "SecretUrl",
    "Settings",
    "SettingsError",
    "TextLimitSettings",
    "TopicSettings",
    "load_settings",
    "mask_url",
]

ENV_PREFIX = "KMSBRIDGE_"


#: Words that make a pass-through Kafka key (dotted, lower case) a secret: passwords, private keys and
#: their passphrases, OAuth client secrets and the OAUTHBEARER config (it may hold a client secret),
#: tokens and JAAS configs. ``ssl.certificate.pem`` and ``ssl.ca.pem`` are public and stay plain.
SECRET_KAFKA_KEY_WORDS = ("password", "secret", "passphrase", "private", "key.pem", "oauthbearer.config",
                          "token", "credential", "jaas")
_SECRET_QUERY_WORDS = ("password", "passwd", "pwd", "secret", "token", "key", "auth", "credential")
_MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with its password and secret-looking query values masked (what logs and reprs show)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{_MASK}@{host}" if ":" in userinfo else f"{_MASK}@{host}"
        query = urlencode([(k, _MASK if any(w in k.lower() for w in _SECRET_QUERY_WORDS) else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
        if not netloc and url.startswith(f"{parts.scheme}://"):
            # sqlite:///path: urlunsplit would drop the empty authority with its slashes
            shown = f"{parts.scheme}://{parts.path}"
            return f"{shown}?{query}" if query else shown
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return _MASK


class SecretUrl(SecretStr):
    """A URL that may hold credentials: shown with :func:`mask_url`, revealed only by ``get_secret_value``."""

    def _display(self) -> str:
        return mask_url(self.get_secret_value())


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
        # pass-through keys such as ssl.key.pem or sasl.oauthbearer.config are secrets too
        extra = self.model_extra or {}
        for name, value in extra.items():
            dotted = name.lower().replace("_", ".")
            if isinstance(value, str) and any(word in dotted for word in SECRET_KAFKA_KEY_WORDS):
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


class TopicSettings(TopicPolicy):
    """Topic names, and how ``kmsbridge topics create`` makes the topics (retention: :class:`TopicPolicy`)."""

    subscriptions: str = "crm.subscriptions"
    communications: str = "crm.communications"
    requests: str = "kms.requests"
    commands: str = "kms.commands"
    #: the express lane: commands of agents' requests (PIN, re-authorisation, single messages, queries)
    commands_express: str = "kms.commands.express"
    results: str = "kms.results"
    reconcile_requests: str = "reconcile.requests"
    reconcile_reports: str = "reconcile.reports"
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    dlq_suffix: str = ".dlq"


class KmsSettings(BaseModel):
    #: the entry point of group ``kmsbridge.kms_adapters`` that builds the KMS adapter (:mod:`kmsbridge.kms`)
    adapter: str = Field(default="soap", min_length=1)
    endpoint: str = "http://127.0.0.1:8089/kms"
    token: SecretStr | None = None
    token_file: Path | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)
    verify_tls: bool = True
    ca_file: Path | None = None
    max_connections: int = Field(default=100, ge=1)
    #: PEM client certificate presented to the KMS (mTLS); its key in ``client_key_file`` or in the same file
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    #: passphrase of an encrypted ``client_key_file``
    client_key_password: SecretStr | None = None
    #: cap on the body of one KMS answer; a larger one is a transient error, never read whole
    max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: how long an idle keep-alive connection to the KMS is reused (less if the KMS says it keeps it less)
    keepalive_seconds: float = Field(default=15.0, ge=0)

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`kms_adapter.soap_client.SoapKmsClient` these settings give,
        beyond endpoint, token, ``timeout``, ``verify`` and ``max_connections``."""
        if self.client_key_file is not None and self.client_cert_file is None:
            raise SettingsError(f"{ENV_PREFIX}KMS__CLIENT_KEY_FILE is set without {ENV_PREFIX}KMS__CLIENT_CERT_FILE")
        return {
            "client_cert": str(self.client_cert_file) if self.client_cert_file else None,
            "client_key": str(self.client_key_file) if self.client_key_file else None,
            "client_key_password": self.client_key_password,
            "max_response_bytes": self.max_response_bytes,
            "keepalive_expiry": self.keepalive_seconds,
        }

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


class PinKeySettings(BaseModel):
    """The keys that seal PINs on Kafka (:mod:`schemas.pin_seal`): base64 AES-256 keys by key id.

    ``file`` names a mounted JSON file ``{"current": "<key id>", "keys": {"<key id>": "<base64>"}}``;
    ``keys`` (JSON in ``KMSBRIDGE_PIN_KEYS__KEYS``) and ``current`` may give them directly, and add
    to / override the file's. New records are sealed with ``current``; every key opens what it sealed.
    """

    current: str | None = None
    keys: dict[str, SecretStr] = Field(default_factory=dict)
    file: Path | None = None

    def ring(self) -> PinKeyRing:
        """The key ring; a missing or bad key stops start-up with a message naming the setting."""
        current, keys = self.current, {k: v.get_secret_value() for k, v in self.keys.items()}
        if self.file is not None:
            name = f"{ENV_PREFIX}PIN_KEYS__FILE"
            try:
                data = json.loads(self.file.read_text(encoding="utf-8"))
            except OSError as exc:
                raise SettingsError(f"{name}: cannot read {self.file}: {exc.strerror}") from None
            except ValueError:
                raise SettingsError(f"{name}: {self.file} is not JSON") from None
            if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
                raise SettingsError(f'{name}: {self.file} must hold {{"current": id, "keys": {{id: base64}}}}')
            keys = {**{str(k): str(v) for k, v in data["keys"].items()}, **keys}
            current = current or (str(data["current"]) if data.get("current") is not None else None)
        if not keys or current is None:
            raise SettingsError(
                f"{ENV_PREFIX}PIN_KEYS__FILE (or {ENV_PREFIX}PIN_KEYS__KEYS with {ENV_PREFIX}PIN_KEYS__CURRENT)"
                " is required: this process reads or writes PINs on kms.requests / kms.commands"
            )
        try:
            return PinKeyRing.from_base64(keys, current)
        except PinKeyError as exc:
            raise SettingsError(f"{ENV_PREFIX}PIN_KEYS: {exc}") from None


class ClassRateLimits(BaseModel):
    """KMS calls per second of one operation class for the whole deployment (unset: no class limit);
    each executor replica takes its share (``consumers.limiter``)."""

    entitlements: float | None = Field(default=None, gt=0, description="SYNC_ENTITLEMENTS, CLEAR_ENTITLEMENTS")
    pairing: float | None = Field(default=None, gt=0, description="PAIR, UNPAIR")
    pin: float | None = Field(default=None, gt=0, description="SET_PIN")
    sector: float | None = Field(default=None, gt=0, description="REAUTHORISE_SECTOR")
    messages: float | None = Field(default=None, gt=0, description="Mail and on-screen messages, global ones too")
    queries: float | None = Field(default=None, gt=0, description="QUERY_CLIENT")

    def as_dict(self) -> dict[str, float]:
        return {name: value for name, value in self.model_dump().items() if value is not None}


class ExecutorSettings(BaseModel):
    max_inflight: int = Field(default=64, ge=1, description="KMS calls in flight at once")
    max_buffered: int = Field(default=2000, ge=1, description="commands taken from Kafka, not yet done")
    lookahead_max_entries: int = Field(
        default=500_000, ge=0, description="boxes x attributes the look-ahead keeps a newer command for while "
        "a backlog exceeds max_buffered (about 570 bytes each, measured: ~285 MB full); 0: no look-ahead "
        "(coalescing sees what is held)")
    retry_initial_seconds: float = Field(default=0.2, gt=0)
    retry_max_seconds: float = Field(default=5.0, gt=0)
    attempt_budget: int = Field(default=6, ge=1, description="attempts per command while the breaker is closed")
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_probe_seconds: float = Field(default=1.0, gt=0)
    prefetch_kbytes: int = Field(default=8192, ge=1024, description="librdkafka read-ahead of the commands topic")
    express_lane: bool = Field(default=True, description="EXPRESS commands (agents' requests) travel on "
                               "topics.commands_express, which the executor reads first with a consumer of its own")
    express_prefetch_kbytes: int = Field(default=1024, ge=1024, description="read-ahead of the express topic")
    rate_limit_per_second: float | None = Field(
        default=None, gt=0, description="KMS calls per second of the whole deployment, every replica's share "
                                        "together (unset: no limit)")
    rate_limits: ClassRateLimits = Field(default_factory=ClassRateLimits,
                                         description="per operation class, on top of rate_limit_per_second")


class TranslatorSettings(BaseModel):
    batch_size: int = Field(default=500, ge=1, le=100_000, description="messages per transaction at most")
    batch_seconds: float = Field(default=0.02, gt=0, le=10, description="longest wait to fill a batch")


class TextLimitSettings(BaseModel):
    ansi_max_chars: int = Field(default=1024, ge=1)
    unicode_max_units: int = Field(default=512, ge=1, description="UTF-16 code units")
    raw_max_bytes: int = Field(default=1024, ge=1)


class CommunicationSettings(BaseModel):
    delivery: Literal["queue", "immediate"] = Field(
        default="queue", description="queue: communications wait PENDING for a mail run definition (CRM.COM); "
                                     "immediate: the translator sends each one as it arrives")
    scheduler_tick_seconds: float = Field(default=1.0, gt=0, le=60, description="how often run definitions are checked")


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: list[SecretStr] = Field(default_factory=list)
    api_keys_file: Path | None = None
    wait_seconds: float = Field(default=10.0, gt=0, description="bound of process_immediately")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="longest request body; 413 beyond")
    rate_limit: str = Field(default="300/minute", description="requests per API key (limits' notation); 429 beyond")
    read_timeout_seconds: float = Field(default=10.0, gt=0, description="longest time to receive a whole request")
    docs: Literal["off", "key", "open"] = Field(
        default="off", description="/openapi.json: not served, behind the API key, or open with /docs and /redoc"
    )

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse  # the notation the Web API's limiter reads

        parse(value)  # ValueError names the value, e.g. "couldn't parse rate limit string '5 a second'"
        return value


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
    database_url: SecretUrl = SecretUrl("sqlite:///var/kmsbridge.db")
    schema_registry_url: SecretUrl | None = None
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    pin_keys: PinKeySettings = Field(default_factory=PinKeySettings)
    provider_file: Path = Path("provider.yaml")
    kms: KmsSettings = Field(default_factory=KmsSettings)
    translator: TranslatorSettings = Field(default_factory=TranslatorSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    text_limits: TextLimitSettings = Field(default_factory=TextLimitSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    request_log: RequestLogSettings = Field(default_factory=RequestLogSettings)
    communications: CommunicationSettings = Field(default_factory=CommunicationSettings)
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 = no metrics server")
    health_ttl_seconds: float = Field(default=30.0, gt=0)
    lag_interval_seconds: float = Field(default=15.0, gt=0, description="refresh of the consumer lag gauges")
    shutdown_grace_seconds: float = Field(default=20.0, gt=0)
    max_message_bytes: int = Field(default=1_000_000, ge=1024)
    max_future_skew_seconds: float = Field(default=86_400.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: SecretUrl) -> SecretUrl:
        if "://" not in value.get_secret_value():
            raise ValueError("must be an SQLAlchemy URL such as sqlite:///var/kmsbridge.db")
        return value

    def topic(self, name: str) -> str:
        """Full topic name for a logical name of :class:`TopicSettings` (prefix applied)."""
        return f"{self.topic_prefix}{getattr(self.topics, name)}"

    def dlq(self, topic: str) -> str:
        return f"{topic}{self.topics.dlq_suffix}"

    def all_topics(self) -> list[str]:
        names = ["subscriptions", "communications", "requests", "commands", "commands_express", "results",
                 "reconcile_requests", "reconcile_reports"]
        base = [self.topic(n) for n in names]
        inputs = [self.topic(n) for n in ("subscriptions", "communications", "requests", "commands",
                                          "commands_express", "reconcile_requests")]
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
    except PydanticSettingsError as exc:  # a value that is not the JSON a list or map setting needs
        found = re.search(r'field "(\w+)"', str(exc))
        name = f"{ENV_PREFIX}{found.group(1).upper()}" if found else "a setting"
        raise SettingsError(f"invalid settings: {name}: cannot be parsed (a list or map takes JSON)") from None
