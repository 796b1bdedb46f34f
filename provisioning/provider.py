"""The provisioning provider: distributors, service → product map, default PIN (docs/architecture.md §1, §8).

``ProviderConfig`` is the validated, immutable form of ``provider.yaml``. Every problem found while
loading is reported as a :class:`ProviderConfigError` whose message names the key path
(``distributors.TWIN1.requires: unknown distributor 'TWIN9'``), so a bad file fails at start with a
message an operator can act on (docs/architecture.md §6).

``default_pin`` is held as ``SecretStr``. It is an operator default, not a customer secret, but it is
written to every new card as that household's parental PIN until they change it, and docs/architecture.md §5
says PINs never reach logs; masking it keeps ``repr(provider)`` safe to log at start-up and treats
every PIN in the system the same way (``KmsCommand.pin`` is ``SecretStr`` too).

This is the one module of ``provisioning/`` that touches the filesystem (:func:`load_provider`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from provisioning.pin import DEFAULT_PIN, PIN_RULE, is_valid_pin
from schemas.limits import Name

__all__ = [
    "ALL_SERVICES",
    "DISTRIBUTOR_NAMES",
    "DistributorName",
    "DistributorRule",
    "MailRunConfig",
    "ProviderConfig",
    "ProviderConfigError",
    "load_provider",
    "provider_from_mapping",
]

DistributorName = Literal["MAIN", "TWIN1", "TWIN2", "TWIN3"]
#: The provisioning distributors, in their canonical order (one viewing point each).
DISTRIBUTOR_NAMES: Final[tuple[str, ...]] = get_args(DistributorName)
#: ``services: "*"``: the distributor may carry every service.
ALL_SERVICES: Final = "*"

class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DistributorRule(_Frozen):
    """What one distributor may carry and which distributor must already be in use first."""

    services: Literal["*"] | tuple[str, ...]
    requires: DistributorName | None = None

    @field_validator("services", mode="before")
    @classmethod
    def _services_shape(cls, value: Any) -> Any:
        # One clear message instead of one error per member of the union.
        if value == ALL_SERVICES:
            return value
        if isinstance(value, list | tuple) and value:
            for item in value:
                if not isinstance(item, str) or not item:
                    raise ValueError(f"service codes must be non-empty strings, got {item!r}")
            return tuple(value)
        raise ValueError('must be "*" (every service) or a non-empty list of service codes')

    def allows(self, service_code: str) -> bool:
        """True when a device on this distributor may receive ``service_code``'s products."""
        return self.services == ALL_SERVICES or service_code in self.services


class MailRunConfig(_Frozen):
    """Mail runs send only the communications addressed to this external system (feature 5)."""

    external_system: Name = "IRDETO"


class ProviderConfig(_Frozen):
    """The validated provider file. Build it with :func:`load_provider` or :func:`provider_from_mapping`."""

    operator_tag: Name
    default_pin: SecretStr = SecretStr(DEFAULT_PIN)
    max_viewing_points: StrictInt = Field(default=4, ge=1, le=4)
    distributors: dict[DistributorName, DistributorRule] = Field(min_length=1)
    products: dict[Name, tuple[Name, ...]] = Field(min_length=1)  # the records' limits (schemas.limits)
    mail_run: MailRunConfig = Field(default_factory=MailRunConfig)

    @field_validator("default_pin", mode="before")
    @classmethod
    def _pin(cls, value: Any) -> Any:
        if value is None:
            return SecretStr(DEFAULT_PIN)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            # YAML reads an unquoted 0001 as the integer 1; say so rather than "not a string".
            raise ValueError(f'{PIN_RULE}, written in quotes (e.g. "0001")')
        if not is_valid_pin(value):
            raise ValueError(PIN_RULE)  # never echo the value
        return SecretStr(value)

    @field_validator("products")
    @classmethod
    def _products_not_empty(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        empty = [code for code, ids in value.items() if not ids]
        if empty:
            raise _Issues([(f"products.{code}", "must list at least one KMS product id") for code in empty])
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> ProviderConfig:
        issues = [*self._unknown_requirements(), *self._requirement_cycles(), *self._unknown_services()]
        if issues:
            raise _Issues(issues)
        return self

    def rule(self, distributor: str) -> DistributorRule | None:
        """The rule of a configured distributor, ``None`` when it is not configured."""
        return self.distributors.get(cast(DistributorName, distributor))

    # --- cross-checks (each yields (key path, problem)) ------------------------------------------

    def _unknown_requirements(self) -> list[tuple[str, str]]:
        return [
            (f"distributors.{name}.requires", f"unknown distributor {rule.requires!r} (not configured)")
            for name, rule in self.distributors.items()
            if rule.requires is not None and rule.requires not in self.distributors
        ]

    def _requirement_cycles(self) -> list[tuple[str, str]]:
        issues = []
        for start in sorted(self.distributors):
            chain = [start]
            current = self.distributors[start].requires
            while current is not None and current in self.distributors and current not in chain:
                chain.append(current)
                current = self.distributors[current].requires
            # Report each cycle once, at its smallest member.
            if current == start and start == min(chain):
                issues.append(
                    (f"distributors.{start}.requires", f"cycle {' -> '.join([*chain, start])}")
                )
        return issues

    def _unknown_services(self) -> list[tuple[str, str]]:
        issues = []
        for name, rule in self.distributors.items():
            if rule.services == ALL_SERVICES:
                continue
            for index, code in enumerate(rule.services):
                if code not in self.products:
                    issues.append(
                        (f"distributors.{name}.services[{index}]",
                         f"unknown service {code!r} (not in products)")
                    )
        return issues


class ProviderConfigError(ValueError):
    """The provider file is unusable. ``issues`` holds (key path, problem) pairs, in file order."""

    def __init__(self, issues: list[tuple[str, str]], source: str | None = None) -> None:
        self.issues: tuple[tuple[str, str], ...] = tuple(issues)
        self.source = source
        text = "; ".join(f"{path}: {problem}" if path else problem for path, problem in issues)
        super().__init__(f"provider file {source}: {text}" if source else text)


def provider_from_mapping(data: Mapping[str, Any]) -> ProviderConfig:
    """Validate an already-parsed provider mapping; :class:`ProviderConfigError` names each bad key."""
    if not isinstance(data, Mapping):
        raise ProviderConfigError([("", f"must be a mapping of settings, got {type(data).__name__}")])
    try:
        return ProviderConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ProviderConfigError(_issues_of(exc)) from exc


def load_provider(path: str | os.PathLike[str]) -> ProviderConfig:
    """Read and validate a ``provider.yaml``; errors name the file and the key path."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProviderConfigError([("", f"cannot read: {exc.strerror or exc}")], source) from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ProviderConfigError([("", f"not valid YAML: {exc}")], source) from exc
    try:
        return provider_from_mapping(data if data is not None else {})
    except ProviderConfigError as exc:
        raise ProviderConfigError(list(exc.issues), source) from exc


# --- internals -------------------------------------------------------------------------------------


class _Issues(ValueError):
    """Raised inside validators to report problems whose key path the validator knows itself."""

    def __init__(self, issues: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {problem}" for path, problem in issues))
        self.issues = issues


def _issues_of(exc: ValidationError) -> list[tuple[str, str]]:
    issues: list[tuple[str, str]] = []
    for error in exc.errors():
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _Issues):
            issues.extend(cause.issues)
            continue
        loc = error["loc"]
        path = _path(loc)
        if error["type"] == "literal_error" and _names_a_distributor(loc):
            problem = (
                f"unknown distributor {error['input']!r} (expected one of {', '.join(DISTRIBUTOR_NAMES)})"
            )
        elif error["type"] == "value_error" and cause is not None:
            problem = str(cause)  # our validator's own words, without pydantic's "Value error, "
        else:
            problem = error["msg"]
        issues.append((path, problem))
    return issues


def _names_a_distributor(loc: tuple[int | str, ...]) -> bool:
    return len(loc) >= 2 and loc[0] == "distributors" and loc[-1] in ("[key]", "requires")


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if part == "[key]":
            continue  # the key itself is already the previous segment
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would silently keep the last one)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
