"""What build runs: ``kmsbridge --version`` and the ``kmsbridge_build_info`` metric agree with the
installed package's metadata."""

from __future__ import annotations

import platform
from importlib.metadata import version

import confluent_kafka
from click.testing import CliRunner
from prometheus_client import REGISTRY

from kmsbridge.cli import main


def test_version_flag_prints_the_installed_version() -> None:
    result = CliRunner().invoke(main, ["--version"])

    assert result.exit_code == 0
    assert result.output == f"kmsbridge {version('kmsbridge')}\n"


def test_build_info_metric_names_version_python_and_the_kafka_client() -> None:
    labels = {"version": version("kmsbridge"), "python": platform.python_version(),
              "confluent_kafka": confluent_kafka.version()[0], "librdkafka": confluent_kafka.libversion()[0]}

    assert REGISTRY.get_sample_value("kmsbridge_build_info", labels) == 1
