"""The KMS adapter is chosen by ``KMSBRIDGE_KMS__ADAPTER`` through the ``kmsbridge.kms_adapters``
entry points (kmsbridge/kms.py), so a real KMS integration plugs in without editing the product."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import kmsbridge.kms as kms_module
from kms_adapter.soap_client import SoapKmsClient
from kmsbridge.errors import SettingsError
from kmsbridge.kms import ADAPTER_GROUP, build_kms
from kmsbridge.settings import KmsSettings, Settings
from provisioning.provider import ProviderConfig, load_provider


def _settings(**kms: Any) -> Settings:
    return Settings(kms=KmsSettings(token=SecretStr("t"), **kms))


def _provider() -> ProviderConfig:
    return load_provider(Path(__file__).resolve().parents[2] / "examples" / "provider.yaml")


built: list[tuple[KmsSettings, str]] = []


def fake_adapter(settings: KmsSettings, operator_tag: str) -> object:
    built.append((settings, operator_tag))
    return "a fake KMS port"


def test_the_default_adapter_is_the_soap_client_declared_in_the_package_metadata() -> None:
    kms = build_kms(_settings(), _provider())

    assert isinstance(kms, SoapKmsClient)


def test_an_adapter_installed_under_another_name_is_built_when_the_setting_names_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = EntryPoint(name="acme", value=f"{__name__}:fake_adapter", group=ADAPTER_GROUP)
    real = kms_module.entry_points
    monkeypatch.setattr(kms_module, "entry_points",
                        lambda group: [*real(group=group), plugin] if group == ADAPTER_GROUP else real(group=group))
    built.clear()

    kms = build_kms(_settings(adapter="acme"), _provider())

    assert kms == "a fake KMS port"
    assert [tag for _settings_seen, tag in built] == ["ALUX"]


def test_an_adapter_that_is_not_installed_stops_start_up_naming_the_setting() -> None:
    with pytest.raises(SettingsError, match=r"KMSBRIDGE_KMS__ADAPTER.*'nosuch'.*installed: .*soap"):
        build_kms(_settings(adapter="nosuch"), _provider())
