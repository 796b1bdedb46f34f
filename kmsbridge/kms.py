"""The one place that builds the KMS adapter every process talks to.

The adapter is chosen by the setting ``KMSBRIDGE_KMS__ADAPTER`` (default ``soap``: the Irdeto SOAP
client of :mod:`kms_adapter.soap_client`). Adapters are found through the entry-point group
``kmsbridge.kms_adapters``: a package that ships a different KMS integration declares, in its own
``pyproject.toml``::

    [project.entry-points."kmsbridge.kms_adapters"]
    my-kms = "my_package.adapter:build"

where ``build(settings: KmsSettings, operator_tag: str) -> KmsPort``, and an operator selects it with
``KMSBRIDGE_KMS__ADAPTER=my-kms``. Nothing in the product is edited.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from kms_adapter.port import KmsPort
from kms_adapter.soap_client import SoapKmsClient
from kmsbridge.errors import SettingsError
from kmsbridge.settings import ENV_PREFIX, KmsSettings, Settings
from provisioning.provider import ProviderConfig

__all__ = ["ADAPTER_GROUP", "KmsFactory", "adapter_names", "build_kms", "soap_adapter"]

#: Entry-point group of the KMS adapters.
ADAPTER_GROUP = "kmsbridge.kms_adapters"

#: What an adapter entry point names: settings and the operator tag in, a KMS port out.
KmsFactory = Callable[[KmsSettings, str], KmsPort]


def soap_adapter(settings: KmsSettings, operator_tag: str) -> SoapKmsClient:
    """The Irdeto SOAP client over the ``KMSBRIDGE_KMS__*`` settings."""
    return SoapKmsClient(settings.endpoint, operator_tag, settings.resolved_token(),
                         timeout=settings.timeout_seconds, verify=settings.verify(),
                         max_connections=settings.max_connections, **settings.client_options())


def adapter_names() -> list[str]:
    return sorted(entry.name for entry in entry_points(group=ADAPTER_GROUP))


def build_kms(settings: Settings, provider: ProviderConfig) -> KmsPort:
    """The adapter ``KMSBRIDGE_KMS__ADAPTER`` names; an unknown name stops start-up naming the setting."""
    name = settings.kms.adapter
    found = [entry for entry in entry_points(group=ADAPTER_GROUP) if entry.name == name]
    if not found:
        raise SettingsError(f"{ENV_PREFIX}KMS__ADAPTER: no KMS adapter named {name!r} is installed "
                            f"(installed: {', '.join(adapter_names()) or 'none'})")
    factory: KmsFactory = found[0].load()
    return factory(settings.kms, provider.operator_tag)
