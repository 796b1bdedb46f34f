"""The Helm chart (``helm/kmsbridge``) renders valid, hardened Kubernetes objects (STYLE.md rule 9).

``helm lint`` and ``helm template`` run with the chart's CI values (only names of existing Secrets and
addresses, as a real install sets them) and with ``values-sasl-tls.yaml``. Every rendered object is
validated offline against the Kubernetes JSON schemas of ``kubernetes-validate`` (strict: unknown fields
fail); the CRD-based kinds it has no schema for are checked structurally here. Then the properties the
chart promises: one object per template file, the security context and probes of every workload, no
Secret rendered, environment names that the product's settings understand, and alerts and dashboard
embedded unchanged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kmsbridge.cli.io import planned_topics
from kmsbridge.settings import ENV_PREFIX, Settings, load_settings
from provisioning.provider import load_provider

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kmsbridge"
CI_VALUES = CHART / "ci" / "default-values.yaml"
SINGLE_BROKER_VALUES = CHART / "ci" / "single-broker-values.yaml"
SASL_VALUES = CHART / "values-sasl-tls.yaml"
DOCKERFILE = ROOT / "Dockerfile"

#: A recent Kubernetes release kubernetes-validate ships schemas for; the chart needs >= 1.27.
K8S_VERSION = "1.33.0"
#: Kinds of CRDs (Prometheus Operator, KEDA): no schema in kubernetes-validate, checked structurally below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}
DEPLOYMENTS = ("translator", "executor", "projector", "reconciler", "api", "request-log")
UID = 10001

Manifest = dict[str, Any]


def _helm() -> str:
    path = os.environ.get("HELM") or str(ROOT / ".cache" / "bin" / "helm")
    if not Path(path).is_file():
        pytest.fail(f"helm not found at {path}: run `make helm` (it builds helm v3.22.0 into .cache/bin), "
                    "or set $HELM to a helm 3 binary")
    return path


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120, check=False)


@cache
def _render(*values: str, sets: tuple[str, ...] = ()) -> tuple[tuple[str, Manifest], ...]:
    """``(template file, object)`` of every object ``helm template`` renders."""
    args = ["template", "rel", str(CHART), "--namespace", "kms", "--kube-version", K8S_VERSION]
    for path in values:
        args += ["-f", path]
    for item in sets:
        args += ["--set", item]
    result = _run_helm(*args)
    assert result.returncode == 0, result.stderr
    out: list[tuple[str, Manifest]] = []
    for doc in result.stdout.split("\n---\n"):
        source = re.search(r"^# Source: (\S+)$", doc, re.MULTILINE)
        obj = yaml.safe_load(doc)
        if obj:
            assert source, f"object without a # Source: line: {doc[:200]}"
            out.append((source.group(1), obj))
    return tuple(out)


def _objects(*values: str, sets: tuple[str, ...] = ()) -> list[Manifest]:
    return [obj for _src, obj in _render(*values, sets=sets)]


PROMETHEUS = "http://prometheus-operated.monitoring:9090"
ALL_ON = ("serviceMonitor.enabled=true", "prometheusRule.enabled=true", "translator.keda.enabled=true",
          "executor.keda.enabled=true", f"executor.keda.breakerGate.prometheusServerAddress={PROMETHEUS}")
RENDERINGS = {
    "ci-defaults": ((str(CI_VALUES),), ()),
    "ci-everything-enabled": ((str(CI_VALUES),), ALL_ON),
    "sasl-tls": ((str(SASL_VALUES),), ()),
    "single-broker": ((str(CI_VALUES), str(SINGLE_BROKER_VALUES)), ()),
}


def _rendering(name: str) -> list[Manifest]:
    values, sets = RENDERINGS[name]
    return _objects(*values, sets=sets)


def _by_kind(objects: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod_specs(objects: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "Job"):
            yield name, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield name, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# --- lint and render ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(CI_VALUES,), (SASL_VALUES,), (CI_VALUES, SINGLE_BROKER_VALUES)],
                         ids=["ci-defaults", "sasl-tls", "single-broker"])
def test_helm_lint_passes_strict(values: tuple[Path, ...]) -> None:
    files = [arg for path in values for arg in ("-f", str(path))]
    result = _run_helm("lint", "--strict", str(CHART), *files, "--kube-version", K8S_VERSION)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendering_without_the_required_values_fails_naming_them() -> None:
    result = _run_helm("template", "rel", str(CHART), "--kube-version", K8S_VERSION)
    assert result.returncode != 0
    assert "kafka.bootstrapServers is required" in result.stderr
    secrets_only = _run_helm("template", "rel", str(CHART), "--kube-version", K8S_VERSION,
                             "--set", "kafka.bootstrapServers=k:9092,kms.endpoint=https://kms/kms")
    assert secrets_only.returncode != 0
    assert "existingSecret is required" in secrets_only.stderr


def test_every_template_file_renders_at_most_one_object() -> None:
    for name in RENDERINGS:
        values, sets = RENDERINGS[name]
        sources = [src for src, _obj in _render(*values, sets=sets)]
        duplicates = {s for s in sources if sources.count(s) > 1}
        assert not duplicates, f"{name}: template files with more than one object: {sorted(duplicates)}"


def test_the_chart_renders_every_object_it_promises() -> None:
    kinds = [o["kind"] for o in _rendering("ci-everything-enabled")]
    for kind, count in {"Deployment": 6, "CronJob": 1, "Job": 1, "ConfigMap": 2, "Service": 2,
                        "ServiceMonitor": 1, "PrometheusRule": 1, "PodDisruptionBudget": 6,
                        "NetworkPolicy": 1, "ServiceAccount": 1, "ScaledObject": 2}.items():
        assert kinds.count(kind) == count, f"{kind}: {kinds.count(kind)} rendered, {count} expected"
    defaults = {o["kind"] for o in _rendering("ci-defaults")}
    assert not defaults & CRD_KINDS, "CRD-based objects must be opt-in (clusters without the CRDs)"


# --- schema validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_every_rendered_object_validates_against_the_kubernetes_schemas(rendering: str) -> None:
    checked = 0
    for obj in _rendering(rendering):
        if obj["kind"] in CRD_KINDS:
            continue  # no schema in kubernetes-validate; see test_crd_objects_are_well_formed
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        checked += 1
    assert checked >= 15


def test_crd_objects_are_well_formed() -> None:
    objects = _rendering("ci-everything-enabled")
    sasl = _rendering("sasl-tls")
    monitor = _by_kind(objects, "ServiceMonitor")["rel-kmsbridge"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # the ServiceMonitor selects the metrics Service, which selects the Deployments' pods on the metrics port
    services = _by_kind(objects, "Service")
    metrics_service = services["rel-kmsbridge-metrics"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()
    assert metrics_service["spec"]["ports"][0]["targetPort"] == "metrics"
    for deployment in _by_kind(objects, "Deployment").values():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert metrics_service["spec"]["selector"].items() <= pod_labels.items()

    rule = _by_kind(objects, "PrometheusRule")["rel-kmsbridge"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(r)

    for obj in _by_kind(objects, "ScaledObject").values():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        target = obj["spec"]["scaleTargetRef"]["name"]
        assert target in _by_kind(objects, "Deployment")
        kafka = [t for t in obj["spec"]["triggers"] if t["type"] == "kafka"]
        # the component's own group first; the executor's express group second (tests/unit/test_express_chart.py)
        assert kafka[0]["metadata"]["consumerGroup"] == f"kmsbridge-{target.removeprefix('rel-kmsbridge-')}"
        for trigger in kafka:
            meta = trigger["metadata"]
            assert {"bootstrapServers", "consumerGroup", "lagThreshold"} <= set(meta)
            assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
        # a KEDA-scaled Deployment leaves replicas to KEDA
        assert "replicas" not in _by_kind(objects, "Deployment")[target]["spec"]

    auth = _by_kind(sasl, "TriggerAuthentication")["rel-kmsbridge-kafka"]
    params = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(params) == {"username", "password", "ca"}
    assert params["password"]["name"] == "kmsbridge-kafka"
    for obj in _by_kind(sasl, "ScaledObject").values():
        for kafka in (t for t in obj["spec"]["triggers"] if t["type"] == "kafka"):
            assert (kafka["metadata"]["sasl"], kafka["metadata"]["tls"]) == ("scram_sha512", "enable")
            assert kafka["authenticationRef"]["name"] == "rel-kmsbridge-kafka"


def test_the_executor_scaler_reports_no_lag_while_the_kms_breaker_is_open() -> None:
    scalers = _by_kind(_rendering("ci-everything-enabled"), "ScaledObject")
    executor = scalers["rel-kmsbridge-executor"]["spec"]
    triggers = {t["name"]: t for t in executor["triggers"]}

    assert set(triggers) == {"breaker_open", "lag", "express_lag"}
    breaker = triggers["breaker_open"]
    assert breaker["type"] == "prometheus" and breaker["metadata"]["serverAddress"] == PROMETHEUS
    assert breaker["metadata"]["query"] == 'max(kmsbridge_kms_breaker_open{namespace="kms"}) or vector(0)'
    modifiers = executor["advanced"]["scalingModifiers"]
    assert modifiers["formula"].startswith("breaker_open > 0 ? 0 : ")
    assert modifiers["target"] == triggers["lag"]["metadata"]["lagThreshold"]
    # the translator never calls the KMS: its scaler is the lag alone
    assert [t["type"] for t in scalers["rel-kmsbridge-translator"]["spec"]["triggers"]] == ["kafka"]


def test_the_breaker_gate_needs_the_prometheus_address() -> None:
    result = _run_helm("template", "rel", str(CHART), "--kube-version", K8S_VERSION, "-f", str(CI_VALUES),
                       "--set", "executor.keda.enabled=true")
    assert result.returncode != 0
    assert "executor.keda.breakerGate.prometheusServerAddress is required" in result.stderr


def test_every_pdb_lets_drains_evict_pods_that_are_not_ready() -> None:
    budgets = _by_kind(_rendering("ci-defaults"), "PodDisruptionBudget")
    assert set(budgets) == {f"rel-kmsbridge-{c}" for c in DEPLOYMENTS}
    assert {b["spec"]["unhealthyPodEvictionPolicy"] for b in budgets.values()} == {"AlwaysAllow"}


# --- security and probes -----------------------------------------------------------------------------


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_every_workload_runs_hardened(rendering: str) -> None:
    pods = list(_pod_specs(_rendering(rendering)))
    assert len(pods) == 8  # 6 Deployments, the reset CronJob, the topics hook Job
    for name, pod in pods:
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == UID, name
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"], name
        for container in pod["containers"]:
            csc = container["securityContext"]
            assert csc["runAsNonRoot"] is True and csc["runAsUser"] == UID, name
            assert csc["readOnlyRootFilesystem"] is True, name
            assert csc["allowPrivilegeEscalation"] is False, name
            assert csc["capabilities"]["drop"] == ["ALL"] and "add" not in csc["capabilities"], name
            assert csc["seccompProfile"]["type"] == "RuntimeDefault", name
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/tmp"]["name"] == "tmp", name
            assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp"), name
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name


def test_security_contexts_are_overridable_for_openshift() -> None:
    """OpenShift's restricted SCC assigns the user itself: unsetting the ids keeps the rest restricted."""
    ids = [f"{ctx}.{field}=null" for ctx in ("podSecurityContext", "containerSecurityContext")
           for field in ("runAsUser", "runAsGroup")]
    sets = (*ids, "podSecurityContext.fsGroup=null")
    pods = list(_pod_specs(_objects(str(CI_VALUES), sets=sets)))
    assert len(pods) == 8
    for name, pod in pods:
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(pod["securityContext"]), name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            csc = container["securityContext"]
            assert "runAsUser" not in csc and csc["runAsNonRoot"] is True, name
            assert csc["readOnlyRootFilesystem"] is True and csc["capabilities"]["drop"] == ["ALL"], name


def test_every_deployment_probes_healthz_and_readyz_on_its_metrics_port() -> None:
    deployments = _by_kind(_rendering("ci-defaults"), "Deployment")
    assert set(deployments) == {f"rel-kmsbridge-{c}" for c in DEPLOYMENTS}
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == 9100, name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["KMSBRIDGE_METRICS_PORT"] == "9100", name
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, f"{name} {probe}"
        assert container["args"] == ["run", name.removeprefix("rel-kmsbridge-")]
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > int(env["KMSBRIDGE_SHUTDOWN_GRACE_SECONDS"] or 0), name


def test_jobs_are_bounded_and_have_no_http_probes() -> None:
    objects = _rendering("ci-defaults")
    for name, pod in _pod_specs(objects):
        if name.startswith("Deployment/"):
            continue
        (container,) = pod["containers"]
        assert pod["restartPolicy"] == "Never", name
        # a CLI command serves no /healthz: a deadline bounds it instead of probes
        assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(container), name
    job = _by_kind(objects, "Job")["rel-kmsbridge-topics"]
    assert job["spec"]["activeDeadlineSeconds"] > 0
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["topics", "create"]
    cron = _by_kind(objects, "CronJob")["rel-kmsbridge-reset-run"]
    assert cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_reset_run_cronjob_passes_schedule_and_filters_to_kmsbridge_reconcile() -> None:
    objects = _objects(str(CI_VALUES), sets=(
        "resetRun.schedule=0 3 * * 1", "resetRun.createdFrom=2026-01-01", "resetRun.createdTo=2026-06-30",
        "resetRun.subscriptionTypes={RESIDENTIAL,BUSINESS}", "resetRun.preview=true"))
    cron = _by_kind(objects, "CronJob")["rel-kmsbridge-reset-run"]
    assert cron["spec"]["schedule"] == "0 3 * * 1"
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["reconcile", "--created-from", "2026-01-01", "--created-to", "2026-06-30",
                                 "--type", "RESIDENTIAL", "--type", "BUSINESS", "--preview", "--wait"]


def test_replicas_come_from_values() -> None:
    objects = _objects(str(CI_VALUES), sets=("translator.replicas=6", "executor.replicas=3"))
    deployments = _by_kind(objects, "Deployment")
    assert deployments["rel-kmsbridge-translator"]["spec"]["replicas"] == 6
    assert deployments["rel-kmsbridge-executor"]["spec"]["replicas"] == 3
    disabled = _objects(str(CI_VALUES), sets=("projector.enabled=false",))
    assert "rel-kmsbridge-projector" not in _by_kind(disabled, "Deployment")
    assert "rel-kmsbridge-projector" not in _by_kind(disabled, "PodDisruptionBudget")


# --- secrets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_no_secret_is_rendered_and_credentials_come_from_existing_secrets(rendering: str) -> None:
    objects = _rendering(rendering)
    assert not [o for o in objects if o["kind"] == "Secret"], "the chart must not create Secrets"
    for name, pod in _pod_specs(objects):
        for container in pod["containers"]:
            for env in container["env"]:
                if re.search(r"PASSWORD|USERNAME|DATABASE_URL|TOKEN$|API_KEYS$", env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{name}: {env['name']} must be a secretKeyRef"
        for volume in pod["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"], name


PIN_PROCESSES = {"translator", "executor", "reconciler", "api"}


def test_every_process_that_reads_or_writes_pins_mounts_the_pin_key_file() -> None:
    deployments = _by_kind(_rendering("ci-defaults"), "Deployment")
    for component in DEPLOYMENTS:
        pod = deployments[f"rel-kmsbridge-{component}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        if component in PIN_PROCESSES:
            assert env["KMSBRIDGE_PIN_KEYS__FILE"] == "/etc/kmsbridge/pin-keys/pin-keys.json", component
            assert volumes["pin-keys"]["secret"]["secretName"] == "kmsbridge-pin-keys", component
            assert volumes["pin-keys"]["secret"]["items"] == [{"key": "pin-keys.json", "path": "pin-keys.json"}]
            assert {"name": "pin-keys", "mountPath": "/etc/kmsbridge/pin-keys", "readOnly": True} in container[
                "volumeMounts"]
        else:  # the projector reads no PIN; the request log reads sealed PINs as masks: no key
            assert "KMSBRIDGE_PIN_KEYS__FILE" not in env and "pin-keys" not in volumes, component


def test_rendering_without_the_pin_key_secret_fails_naming_it() -> None:
    result = _run_helm("template", "rel", str(CHART), "--kube-version", K8S_VERSION, "-f", str(CI_VALUES),
                       "--set", "pinKeys.existingSecret=")
    assert result.returncode != 0
    assert "pinKeys.existingSecret is required" in result.stderr


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_the_web_api_is_refused_on_unencrypted_kafka_unless_accepted(protocol: str) -> None:
    def render(*sets: str) -> subprocess.CompletedProcess[str]:
        args = ["template", "rel", str(CHART), "--kube-version", K8S_VERSION, "-f", str(CI_VALUES),
                "--set", f"kafka.securityProtocol={protocol}"]
        for item in sets:
            args += ["--set", item]
        return _run_helm(*args)

    refused = render()
    assert refused.returncode != 0
    assert f"kafka.securityProtocol {protocol}" in refused.stderr and "kafka.acceptPlaintext" in refused.stderr
    assert render("kafka.acceptPlaintext=true").returncode == 0
    assert render("api.enabled=false").returncode == 0  # no Web API: the operator's cluster, the operator's call


def test_values_hold_no_secret_values() -> None:
    for path in (CHART / "values.yaml", SASL_VALUES, CI_VALUES):
        for key, value in _leaves(yaml.safe_load(path.read_text())):
            if re.search(r"(?i)password$|token$|secret$|apikeys?$", key.rsplit(".", 1)[-1]):
                # only names of Secrets (existingSecret, caSecret) or empty; never a credential itself
                assert key.endswith(("existingSecret", "caSecret")) or value in ("", None), f"{path.name}: {key}"


# --- settings, provider, alerts, dashboard -----------------------------------------------------------


def _settings_field_known(name: str) -> bool:
    """Whether ``KMSBRIDGE_A__B`` names a settings field (nested models by ``__``)."""
    parts = name.removeprefix(ENV_PREFIX).lower().split("__")
    model: Any = Settings
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            # KafkaSettings passes any other key through to librdkafka
            return model.__name__ == "KafkaSettings" and i == len(parts) - 1
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) else None
        if i < len(parts) - 1 and (model is None or not hasattr(model, "model_fields")):
            return False
    return True


@pytest.mark.parametrize("rendering", ["ci-defaults", "sasl-tls"])
def test_container_environment_is_understood_by_the_product_settings(
    rendering: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, pod in _pod_specs(_rendering(rendering)):
        (container,) = pod["containers"]
        env: dict[str, str] = {}
        for item in container["env"]:
            assert item["name"] == "POD_NAME" or item["name"].startswith(ENV_PREFIX), f"{name}: {item['name']}"
            if item["name"].startswith(ENV_PREFIX):
                assert _settings_field_known(item["name"]), f"{name}: {item['name']} is no setting"
            env[item["name"]] = item.get("value", "from-a-secret")
        if "KMSBRIDGE_DATABASE_URL" in env:
            env["KMSBRIDGE_DATABASE_URL"] = "postgresql+psycopg://u@db/kmsbridge"
        for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.metrics_port == 9100, name
        kafka = settings.kafka_config()
        assert kafka["bootstrap.servers"], name
        if rendering == "sasl-tls":
            assert kafka["security.protocol"] == "SASL_SSL" and kafka["sasl.mechanism"] == "SCRAM-SHA-512"
            assert kafka["ssl.ca.location"] == "/etc/kmsbridge/kafka-ca/ca.crt"
            assert settings.topic("commands") == "prod.kms.commands"


def test_provider_configmap_holds_a_valid_provider_file(tmp_path: Path) -> None:
    config = _by_kind(_rendering("ci-defaults"), "ConfigMap")["rel-kmsbridge-provider"]
    path = tmp_path / "provider.yaml"
    path.write_text(config["data"]["provider.yaml"])
    provider = load_provider(path)
    assert provider.operator_tag == "ALUX"
    deployment = _by_kind(_rendering("ci-defaults"), "Deployment")["rel-kmsbridge-executor"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["provider"]["configMap"]["name"] == "rel-kmsbridge-provider"


def test_prometheus_rule_embeds_the_tested_alert_file_unchanged() -> None:
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    rule = _by_kind(_rendering("ci-everything-enabled"), "PrometheusRule")["rel-kmsbridge"]
    assert rule["spec"]["groups"] == alerts["groups"]
    fewer = _objects(str(CI_VALUES), sets=("prometheusRule.enabled=true",
                                           "prometheusRule.disabledAlerts={KmsbridgeResetRunOverdue}"))
    names = [r["alert"] for g in _by_kind(fewer, "PrometheusRule")["rel-kmsbridge"]["spec"]["groups"]
             for r in g["rules"]]
    assert "KmsbridgeResetRunOverdue" not in names and "KmsbridgeKmsBreakerOpen" in names


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar_and_holds_the_dashboard() -> None:
    config = _by_kind(_rendering("ci-defaults"), "ConfigMap")["rel-kmsbridge-dashboard"]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["kmsbridge.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text())


def test_network_policy_admits_only_the_metrics_and_api_ports() -> None:
    policy = _by_kind(_rendering("sasl-tls"), "NetworkPolicy")["rel-kmsbridge"]
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ports == ["metrics", "http"]
    assert policy["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


# --- values documentation and image ------------------------------------------------------------------


def _leaves(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, data


def test_every_value_in_values_yaml_is_commented() -> None:
    """A value is documented by a comment right above it or above one of its parent keys (a block such
    as ``provider`` or ``resources`` is documented as a whole)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented: list[str] = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([\w.-]+):(.*)$", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        documented = previous.lstrip().startswith("#") or any(d for _i, d in stack)
        is_leaf = match.group(3).strip() != ""
        if is_leaf and not documented:
            undocumented.append(f"line {i + 1}: {match.group(2)}")
        stack.append((indent, documented))
    assert not undocumented, "values without a comment: " + ", ".join(undocumented)


def test_dockerfile_builds_a_non_root_image_matching_the_chart() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim@sha256:[0-9a-f]{64}$", text, re.MULTILINE), "base image by digest"
    assert re.search(r"^RUN pip install -c constraints\.txt \. ", text, re.MULTILINE), "packages from the lock"
    assert "constraints.txt" in re.search(r"^COPY pyproject\.toml .*$", text, re.MULTILINE).group(0)  # type: ignore[union-attr]
    assert re.search(rf"^USER {UID}(:{UID})?$", text, re.MULTILINE), "image user must match runAsUser"
    assert re.search(r'^ENTRYPOINT \["kmsbridge"\]$', text, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".cache", ".git"} <= set(ignored)


# --- values schema, NOTES, helm test, schema registry -------------------------------------------------


@pytest.mark.parametrize(("setting", "error"), [
    ("executor.replicas=two", "/executor/replicas"),
    ("logFormat=yaml", "/logFormat"),
    ("schemaRegistry.autoRegister=maybe", "/schemaRegistry/autoRegister"),
    ("schemaRegistryUrl=http://sr:8081", "schemaRegistryUrl"),  # an unknown key, e.g. a renamed value
    ("topics.retentionHours.commands=4d", "/topics/retentionHours/commands"),
    ("topics.retentionHours.command=96", "command"),
    ("topics.replicationFactor=0", "/topics/replicationFactor"),
])
def test_a_value_of_the_wrong_type_or_an_unknown_key_fails_helm_lint(setting: str, error: str) -> None:
    result = _run_helm("lint", "--strict", str(CHART), "-f", str(CI_VALUES), "--kube-version", K8S_VERSION,
                       "--set", setting)
    assert result.returncode != 0
    assert error in result.stdout + result.stderr


def test_values_schema_describes_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_notes_tell_how_to_check_the_release() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "helm test {{ .Release.Name }}" in notes and "kmsbridge lag" in notes


def test_helm_test_hook_reads_the_groups_lag_with_the_release_settings() -> None:
    objects = _rendering("sasl-tls")
    (pod,) = [o for o in objects if o["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["lag", "--json"]
    env = {e["name"] for e in container["env"]}
    assert {"KMSBRIDGE_KAFKA__BOOTSTRAP_SERVERS", "KMSBRIDGE_KAFKA__SASL_PASSWORD"} <= env
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_schema_registry_credentials_and_ca_come_from_existing_secrets() -> None:
    sets = ("schemaRegistry.url=https://registry.example.net", "schemaRegistry.existingSecret=kmsbridge-registry",
            "schemaRegistry.caSecret=kmsbridge-registry-ca")
    objects = _objects(str(CI_VALUES), sets=sets)
    deployments = _by_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["KMSBRIDGE_SCHEMA_REGISTRY_URL"]["value"] == "https://registry.example.net", name
        assert env["KMSBRIDGE_SCHEMA_REGISTRY__AUTO_REGISTER"]["value"] == "false", name
        assert env["KMSBRIDGE_SCHEMA_REGISTRY__USERNAME"]["valueFrom"]["secretKeyRef"] == {
            "name": "kmsbridge-registry", "key": "username"}, name
        password_file = env["KMSBRIDGE_SCHEMA_REGISTRY__PASSWORD_FILE"]["value"]
        ca_file = env["KMSBRIDGE_SCHEMA_REGISTRY__CA_LOCATION"]["value"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert password_file == f"{mounts['schema-registry']}/password", name
        assert ca_file == f"{mounts['schema-registry-ca']}/ca.crt", name
        assert volumes["schema-registry"]["secret"]["secretName"] == "kmsbridge-registry", name
        assert volumes["schema-registry-ca"]["secret"]["secretName"] == "kmsbridge-registry-ca", name
    assert not [o for o in objects if o["kind"] == "Secret"]


# --- topics: the hook Job plans the one topic table with the chart's numbers ---------------------------


def _topic_plan_of_the_job(objects: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, str]]:
    """The plan ``kmsbridge topics create`` makes inside the rendered hook Job: topic -> config, plus the
    partitions and replication under ``"*"``."""
    (container,) = _by_kind(objects, "Job")["rel-kmsbridge-topics"]["spec"]["template"]["spec"]["containers"]
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for item in container["env"]:
        if item["name"].startswith(ENV_PREFIX) and "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
    settings = load_settings()
    plan = {p.name: p.config for p in planned_topics(settings)}
    plan["*"] = {"partitions": str(settings.topics.partitions),
                 "replication": str(settings.topics.replication_factor)}
    return plan


def test_the_topics_job_compacts_subscriptions_and_times_every_topic_from_the_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = _topic_plan_of_the_job(_rendering("ci-defaults"), monkeypatch)
    day = 24 * 3_600_000
    assert plan["*"] == {"partitions": "6", "replication": "3"}
    assert plan["crm.subscriptions"] == {"cleanup.policy": "compact", "min.compaction.lag.ms": str(7 * day),
                                         "delete.retention.ms": str(7 * day), "min.insync.replicas": "2"}
    retention = {name: int(config["retention.ms"]) // day for name, config in plan.items()
                 if config.get("cleanup.policy") == "delete"}
    assert retention == {
        "crm.communications": 7, "kms.requests": 4, "kms.commands": 4, "kms.commands.express": 4,
        "kms.results": 14, "reconcile.requests": 7, "reconcile.reports": 7, "crm.subscriptions.dlq": 30,
        "crm.communications.dlq": 30, "kms.requests.dlq": 30, "kms.commands.dlq": 30,
        "kms.commands.express.dlq": 30, "reconcile.requests.dlq": 30,
    }
    assert {config["min.insync.replicas"] for name, config in plan.items() if name != "*"} == {"2"}

    changed = _topic_plan_of_the_job(_objects(str(CI_VALUES), sets=(
        "topics.retentionHours.commands=48", "topics.retentionHours.dlq=2160",
        "topics.subscriptions.minCompactionLagHours=72", "topics.subscriptions.deleteRetentionHours=24",
        "topics.replicationFactor=5", "topics.minInsyncReplicas=3")), monkeypatch)
    assert changed["*"]["replication"] == "5"
    assert changed["kms.commands"]["retention.ms"] == str(2 * day)
    assert changed["kms.commands.dlq"]["retention.ms"] == str(90 * day)
    assert changed["kms.results"]["retention.ms"] == str(14 * day)
    assert changed["crm.subscriptions"]["min.compaction.lag.ms"] == str(3 * day)
    assert changed["crm.subscriptions"]["delete.retention.ms"] == str(day)
    assert changed["kms.requests"]["min.insync.replicas"] == "3"


def test_a_single_broker_environment_gets_replication_one_and_one_in_sync_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = _topic_plan_of_the_job(_rendering("single-broker"), monkeypatch)
    assert plan.pop("*")["replication"] == "1"
    assert {config["min.insync.replicas"] for config in plan.values()} == {"1"}
    derived = _topic_plan_of_the_job(_objects(str(CI_VALUES), sets=("topics.minInsyncReplicas=0",)), monkeypatch)
    assert derived["kms.commands"]["min.insync.replicas"] == "2"  # derived from 3 replicas


def test_the_topics_job_keeps_existing_configs_only_when_asked() -> None:
    def args(*sets: str) -> list[str]:
        job = _by_kind(_objects(str(CI_VALUES), sets=sets), "Job")["rel-kmsbridge-topics"]
        return list(job["spec"]["template"]["spec"]["containers"][0]["args"])

    assert args() == ["topics", "create"]
    assert args("topics.updateExistingConfigs=false") == ["topics", "create", "--keep-existing-configs"]
