"""The domain core (docs/architecture.md §2, floor 1): provider config, entitlement rules, planning, keys.

Pure: no Kafka, HTTP, SQL or clock; the only I/O is reading the provider file. Both the translator
and the reconciler plan through this package, so a real-time change and a reset converge on the same
KMS state.
"""

from provisioning.entitlements import DesiredClient, desired_state, entitled_products
from provisioning.errors import ERROR_CODES, InvalidSubscription, PlanningError, Rejection
from provisioning.keys import KeySource, idempotency_key, rejection_key
from provisioning.pin import validate_pin
from provisioning.plan import Plan, Skip
from provisioning.planning import plan_reset, plan_subscription
from provisioning.provider import (
    DistributorRule,
    ProviderConfig,
    ProviderConfigError,
    load_provider,
    provider_from_mapping,
)
from provisioning.requests import plan_communication, plan_request
from provisioning.text import TextLimits, validate_text
from provisioning.validation import validate_subscription

__all__ = [
    "ERROR_CODES",
    "DesiredClient",
    "DistributorRule",
    "InvalidSubscription",
    "KeySource",
    "Plan",
    "PlanningError",
    "ProviderConfig",
    "ProviderConfigError",
    "Rejection",
    "Skip",
    "TextLimits",
    "desired_state",
    "entitled_products",
    "idempotency_key",
    "load_provider",
    "plan_communication",
    "plan_request",
    "plan_reset",
    "plan_subscription",
    "provider_from_mapping",
    "rejection_key",
    "validate_pin",
    "validate_subscription",
    "validate_text",
]
