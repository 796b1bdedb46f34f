"""The provider file: defaults, cross-checks and error messages that name the key path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from provisioning.provider import (
    DistributorRule,
    ProviderConfigError,
    load_provider,
    provider_from_mapping,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "provider.yaml"

MINIMAL: dict[str, Any] = {
    "operator_tag": "ALUX",
    "distributors": {
        "MAIN": {"services": "*"},
        "TWIN1": {"services": ["BASIC"], "requires": "MAIN"},
    },
    "products": {"BASIC": ["P100", "P101"], "SPORTS": ["P200"]},
}


def with_changes(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data.update(changes)
    return data


def with_distributor(name: str, rule: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    data["distributors"][name] = rule
    return data


def error_of(data: Any) -> ProviderConfigError:
    with pytest.raises(ProviderConfigError) as caught:
        provider_from_mapping(data)
    return caught.value


# --- the sample file ---------------------------------------------------------------------------------


def test_example_provider_file_loads() -> None:
    provider = load_provider(EXAMPLE)

    assert provider.operator_tag == "ALUX"
    assert provider.default_pin.get_secret_value() == "0001"
    assert provider.max_viewing_points == 4
    assert provider.distributors["MAIN"].services == "*"
    assert provider.distributors["TWIN1"] == DistributorRule(services=("BASIC",), requires="MAIN")
    assert provider.distributors["TWIN2"].requires == "MAIN"
    assert provider.distributors["TWIN3"].requires == "TWIN2"
    assert provider.products == {"BASIC": ("P100", "P101"), "SPORTS": ("P200",), "MOVIES": ("P300",)}
    assert provider.mail_run.external_system == "IRDETO"


# --- defaults ----------------------------------------------------------------------------------------


def test_absent_optional_settings_take_their_documented_defaults() -> None:
    provider = provider_from_mapping(MINIMAL)

    assert provider.default_pin.get_secret_value() == "0001"
    assert provider.max_viewing_points == 4
    assert provider.mail_run.external_system == "IRDETO"


def test_configured_default_pin_and_viewing_points_are_kept() -> None:
    provider = provider_from_mapping(with_changes(default_pin="4321", max_viewing_points=2))

    assert provider.default_pin.get_secret_value() == "4321"
    assert provider.max_viewing_points == 2


def test_default_pin_is_masked_in_repr() -> None:
    provider = provider_from_mapping(with_changes(default_pin="4321"))

    assert "4321" not in repr(provider)
    assert "4321" not in str(provider)


def test_provider_config_is_immutable() -> None:
    provider = provider_from_mapping(MINIMAL)

    with pytest.raises(ValidationError):
        provider.operator_tag = "OTHER"


# --- distributor rules -------------------------------------------------------------------------------


def test_star_allows_every_service_and_a_list_only_its_members() -> None:
    provider = provider_from_mapping(MINIMAL)

    assert provider.distributors["MAIN"].allows("ANYTHING")
    assert provider.distributors["TWIN1"].allows("BASIC")
    assert not provider.distributors["TWIN1"].allows("SPORTS")


def test_rule_of_an_unconfigured_distributor_is_none() -> None:
    provider = provider_from_mapping(MINIMAL)

    assert provider.rule("TWIN2") is None
    assert provider.rule("MAIN") == DistributorRule(services="*")


# --- cross-checks name the key path ------------------------------------------------------------------


def test_requires_naming_an_impossible_distributor_names_the_key_path() -> None:
    error = error_of(with_distributor("TWIN1", {"services": ["BASIC"], "requires": "TWIN9"}))

    assert str(error).startswith("distributors.TWIN1.requires: unknown distributor 'TWIN9'")
    assert error.issues[0][0] == "distributors.TWIN1.requires"


def test_requires_naming_an_unconfigured_distributor_is_rejected() -> None:
    error = error_of(with_distributor("TWIN2", {"services": ["BASIC"], "requires": "TWIN3"}))

    assert "distributors.TWIN2.requires: unknown distributor 'TWIN3' (not configured)" in str(error)


def test_requirement_cycle_is_rejected_once() -> None:
    data = with_distributor("TWIN2", {"services": ["BASIC"], "requires": "TWIN3"})
    data["distributors"]["TWIN3"] = {"services": ["BASIC"], "requires": "TWIN2"}

    error = error_of(data)

    assert error.issues == (("distributors.TWIN2.requires", "cycle TWIN2 -> TWIN3 -> TWIN2"),)


def test_distributor_requiring_itself_is_a_cycle() -> None:
    error = error_of(with_distributor("MAIN", {"services": "*", "requires": "MAIN"}))

    assert "distributors.MAIN.requires: cycle MAIN -> MAIN" in str(error)


def test_service_not_in_products_is_rejected_with_its_index() -> None:
    error = error_of(with_distributor("TWIN1", {"services": ["BASIC", "MOVIES"], "requires": "MAIN"}))

    assert "distributors.TWIN1.services[1]: unknown service 'MOVIES' (not in products)" in str(error)


def test_distributor_name_outside_main_and_twins_is_rejected() -> None:
    error = error_of(with_distributor("TWIN4", {"services": "*"}))

    assert "distributors.TWIN4: unknown distributor 'TWIN4'" in str(error)


@pytest.mark.parametrize("services", [[], "BASIC", 3, [""], ["BASIC", 7]])
def test_services_must_be_star_or_a_list_of_codes(services: Any) -> None:
    error = error_of(with_distributor("TWIN1", {"services": services, "requires": "MAIN"}))

    assert error.issues[0][0] == "distributors.TWIN1.services"


def test_no_distributor_at_all_is_rejected() -> None:
    error = error_of(with_changes(distributors={}))

    assert error.issues[0][0] == "distributors"


def test_service_with_no_product_ids_is_rejected() -> None:
    error = error_of(with_changes(products={"BASIC": []}))

    assert ("products.BASIC", "must list at least one KMS product id") in error.issues


def test_empty_product_id_is_rejected() -> None:
    error = error_of(with_changes(products={"BASIC": ["P100", ""]}))

    assert error.issues[0][0] == "products.BASIC[1]"


# --- PIN and viewing points --------------------------------------------------------------------------


@pytest.mark.parametrize("pin", ["123", "12345", "12a4", "\uff11\uff12\uff13\uff14", "1234\n"])
def test_default_pin_must_be_four_ascii_digits_and_is_not_echoed(pin: str) -> None:
    error = error_of(with_changes(default_pin=pin))

    assert error.issues == (("default_pin", "must be exactly 4 ASCII digits"),)
    assert pin not in str(error)


def test_unquoted_yaml_pin_is_rejected_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "provider.yaml"
    path.write_text(EXAMPLE.read_text().replace('default_pin: "0001"', "default_pin: 0001"))

    with pytest.raises(ProviderConfigError) as caught:
        load_provider(path)

    assert 'default_pin: must be exactly 4 ASCII digits, written in quotes (e.g. "0001")' in str(caught.value)


@pytest.mark.parametrize("points", [0, 5, True, "4"])
def test_max_viewing_points_must_be_an_integer_from_one_to_four(points: Any) -> None:
    error = error_of(with_changes(max_viewing_points=points))

    assert error.issues[0][0] == "max_viewing_points"


# --- other input errors -------------------------------------------------------------------------------


def test_unknown_setting_is_rejected_by_name() -> None:
    error = error_of(with_changes(distributor={}))

    assert error.issues == (("distributor", "Extra inputs are not permitted"),)


def test_missing_operator_tag_is_rejected() -> None:
    data = copy.deepcopy(MINIMAL)
    del data["operator_tag"]

    assert error_of(data).issues[0][0] == "operator_tag"


def test_non_mapping_is_rejected() -> None:
    assert "must be a mapping" in str(error_of(["not", "a", "mapping"]))


def test_every_problem_is_reported_not_only_the_first() -> None:
    data = with_changes(default_pin="12", max_viewing_points=9)

    paths = [path for path, _ in error_of(data).issues]

    assert paths == ["default_pin", "max_viewing_points"]


# --- the file loader ----------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(ProviderConfigError) as caught:
        load_provider(path)

    assert str(caught.value).startswith(f"provider file {path}: cannot read")


def test_errors_from_a_file_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "provider.yaml"
    path.write_text(EXAMPLE.read_text().replace("requires: TWIN2", "requires: TWIN9"))

    with pytest.raises(ProviderConfigError) as caught:
        load_provider(path)

    assert str(caught.value).startswith(
        f"provider file {path}: distributors.TWIN3.requires: unknown distributor 'TWIN9'"
    )
    assert caught.value.source == str(path)


def test_invalid_yaml_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "provider.yaml"
    path.write_text("operator_tag: [unclosed\n")

    with pytest.raises(ProviderConfigError, match="not valid YAML"):
        load_provider(path)


def test_duplicate_yaml_key_is_rejected_instead_of_silently_kept(tmp_path: Path) -> None:
    path = tmp_path / "provider.yaml"
    path.write_text(EXAMPLE.read_text().replace("  MAIN:  {services: \"*\"}\n",
                                                "  MAIN:  {services: \"*\"}\n  MAIN: {services: [BASIC]}\n"))

    with pytest.raises(ProviderConfigError, match="duplicate key 'MAIN'"):
        load_provider(path)


def test_empty_file_reports_the_missing_settings(tmp_path: Path) -> None:
    path = tmp_path / "provider.yaml"
    path.write_text("")

    with pytest.raises(ProviderConfigError) as caught:
        load_provider(path)

    assert {p for p, _ in caught.value.issues} == {"operator_tag", "distributors", "products"}
