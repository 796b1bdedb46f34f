"""Settings of the Confluent Schema Registry client (``KMSBRIDGE_SCHEMA_REGISTRY__*``), a section of
:class:`kmsbridge.settings.Settings`; the URL itself is ``KMSBRIDGE_SCHEMA_REGISTRY_URL``.

The password comes from the environment or from a mounted secret file (the chart's
``existingSecret``); the CA file verifies the registry's certificate. Production defaults: the
schemas are registered by whoever owns the subjects, so the codec only looks its schema up
(``AUTO_REGISTER=false``); the local stack and tests turn registration on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, model_validator

from kmsbridge.errors import SettingsError
from schemas.codec import RegistryOptions, SubjectNameStrategy

__all__ = ["SchemaRegistrySettings"]

_PREFIX = "KMSBRIDGE_SCHEMA_REGISTRY__"


class SchemaRegistrySettings(BaseModel):
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_location: Path | None = None
    subject_name_strategy: SubjectNameStrategy = "topic"
    auto_register: bool = False
    use_latest_version: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> SchemaRegistrySettings:
        if self.auto_register and self.use_latest_version:
            raise ValueError("AUTO_REGISTER and USE_LATEST_VERSION exclude each other (as in confluent-kafka)")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs USERNAME")
        return self

    def options(self) -> RegistryOptions:
        return RegistryOptions(subject_name_strategy=self.subject_name_strategy, auto_register=self.auto_register,
                               use_latest_version=self.use_latest_version, setting=_PREFIX)

    def client_config(self) -> dict[str, Any]:
        """``SchemaRegistryClient`` settings (basic auth, CA) other than the URL."""
        config: dict[str, Any] = {}
        if self.username:
            config["basic.auth.user.info"] = f"{self.username}:{self._password()}"
        if self.ca_location is not None:
            config["ssl.ca.location"] = str(self.ca_location)
        return config

    def _password(self) -> str:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise SettingsError(f"{_PREFIX}PASSWORD_FILE: cannot read {self.password_file}: {exc}") from exc
        return ""
