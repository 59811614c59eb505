"""deploy/kubernetes: every manifest is valid Kubernetes, and it runs the node the way the CLI, the settings
and the Dockerfile say it must be run; the MONAI Deploy files follow those projects' published contracts.

Kubernetes: the OpenAPI-derived JSON schemas shipped inside the ``kubernetes-validate`` package
(strict: unknown fields fail), for the versions in ``KUBERNETES_VERSIONS``; the kustomizations are
rendered by ``kubectl kustomize`` (kubectl 1.32 with kustomize 5.5 here).  Argo: the WorkflowTemplate
must round-trip through the Argo Workflows models of ``hera-workflows`` (generated from Argo's own
OpenAPI), and its container through the Kubernetes Container schema.  The MONAI Deploy Workflow Manager
publishes no JSON schema: its workflow is checked against the contract models and the rules of
``WorkflowValidator`` of monai-deploy-workflow-manager (commit 9e10e95, release 0.2.1 + 46;
``src/WorkflowManager/Contracts/Models/*.cs``, ``src/WorkflowManager/WorkflowManager/Validators/
WorkflowValidator.cs``, ``src/Common/Configuration/ArgoParameters.cs``,
``src/Common/Miscellaneous/ValidationConstants.cs``, ``guidelines/mwm-workflow-spec.md``), the
Informatics Gateway configuration against ``docs/api/rest/config.md`` and ``src/Api/Models/*.cs`` of
monai-deploy-informatics-gateway (commit 89c9218, release 0.5.2 + 3).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from test_packaging import ROOT, _dockerfile, _json_form
from xiqa.__main__ import MAP_DEFAULTS
from xiqa.cli import EXIT_REJECTED, build_parser, serve_settings
from xiqa.operators.loader import SUPPORTED_SOP_CLASSES

DEPLOY = ROOT / "deploy" / "kubernetes"
MONAI_DEPLOY = DEPLOY / "monai-deploy"
#: the oldest Kubernetes the manifests are written for, and the newest schemas kubernetes-validate ships
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KUSTOMIZATIONS = ("base", "overlays/example-site")
KUBECTL = shutil.which("kubectl")
requires_kubectl = pytest.mark.skipif(KUBECTL is None, reason="needs kubectl (kustomize) to render")
#: the measured peak of `xiqa serve` (benchmarks/serve_memory.py, normgrad1 on 2000-2800 px images)
MEASURED_PEAK_MIB = 2966


@cache
def rendered(kustomization: str) -> tuple[dict, ...]:
    text = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / kustomization)], capture_output=True,
                          text=True, check=True, timeout=120).stdout
    return tuple(doc for doc in yaml.safe_load_all(text) if doc)


def plain_manifests() -> list[Path]:
    """Every manifest file that is applied as it is (not a kustomization or a patch)."""
    files = sorted(DEPLOY.glob("base/*.yaml")) + sorted(DEPLOY.glob("recovery/*.yaml"))
    return [path for path in files if path.name != "kustomization.yaml"]


def one(documents: tuple[dict, ...] | list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def quantity_mib(value: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i)", value).groups()
    return float(number) * units[unit]


def serve_command(container: dict) -> list[str]:
    """The node's command line: the serve image's entry point (Dockerfile) plus the container's args."""
    assert "command" not in container  # the image's entry point runs
    return _json_form(dict(_dockerfile()["serve"])["ENTRYPOINT"]) + container["args"]


# --------------------------------------------------------------------------- Kubernetes schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_plain_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    for path in plain_manifests():
        for document in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(document, version, strict=True)


@requires_kubectl
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_kustomization_validates_against_the_kubernetes_schemas(kustomization: str,
                                                                               version: str) -> None:
    documents = rendered(kustomization)
    assert {d["kind"] for d in documents} >= {"StatefulSet", "Service", "ConfigMap", "NetworkPolicy",
                                               "ServiceAccount", "PodDisruptionBudget"}
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_rejects_an_unknown_field_and_a_wrong_type() -> None:
    statefulset = yaml.safe_load((DEPLOY / "base" / "statefulset.yaml").read_text())
    typo = copy.deepcopy(statefulset)
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        kubernetes_validate.validate(typo, KUBERNETES_VERSIONS[0], strict=True)
    wrong = copy.deepcopy(statefulset)
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------- the node as the CLI sees it


def node_pod(documents) -> tuple[dict, dict]:
    """(pod spec, the xiqa container) of the StatefulSet."""
    spec = one(documents, "StatefulSet", "xiqa")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def settings_of(documents, tmp_path: Path):
    """ServeSettings exactly as `xiqa serve` builds them in the pod: flags over the mounted xiqa.toml."""
    spec, container = node_pod(documents)
    command = serve_command(container)
    args = build_parser().parse_args(command[1:])
    config = next(d for d in documents if d["kind"] == "ConfigMap")
    (config_volume,) = [v for v in spec["volumes"] if v.get("configMap")]
    assert config_volume["configMap"]["name"] == config["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == config_volume["name"]]
    assert args.config.parent == Path(mount["mountPath"]) and args.config.name in config["data"]
    local = tmp_path / args.config.name
    local.write_text(config["data"][args.config.name])
    args.config = local
    return serve_settings(args), args


@requires_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_statefulset_ports_probes_and_mounts_match_the_cli_and_the_dockerfile(kustomization: str,
                                                                              tmp_path: Path) -> None:
    documents = rendered(kustomization)
    spec, container = node_pod(documents)
    settings, args = settings_of(documents, tmp_path)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"dicom": settings.port, "metrics": settings.metrics_port}
    expose = dict(_dockerfile()["serve"])["EXPOSE"].split()
    assert {str(settings.port), str(settings.metrics_port)} <= set(expose)
    # every probe is `xiqa health` against the node's own port, in its TLS mode, admitted by the allow-lists
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["xiqa", "health"]
        health = build_parser().parse_args(command[1:])
        assert health.port == settings.port and health.ae_title == settings.ae_title
        assert health.tls == (settings.tls_certificate is not None)
        assert (settings.tls_ca is None) or (health.tls_certificate is not None)  # a node that asks for one
        assert not settings.allowed_ae_titles or health.calling_ae_title in settings.allowed_ae_titles
        assert not settings.allowed_hosts or health.host in settings.allowed_hosts
        assert container[probe]["timeoutSeconds"] > health.timeout
    # the spool and outputs are on the per-replica volume, at the image's VOLUME
    claims = {t["metadata"]["name"] for t in one(documents, "StatefulSet")["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = _json_form(dict(_dockerfile()["serve"])["VOLUME"])[0]
    assert mounts[volume] in claims
    assert settings.storage.is_relative_to(volume) and settings.output.is_relative_to(volume)
    # TLS material comes from the Secret's mount
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    for path in (settings.tls_certificate, settings.tls_key, settings.tls_ca):
        if path is not None:
            (mount_path,) = [m for m in mounts if path.is_relative_to(m)]
            assert mounts[mount_path] in secrets
            assert path.name in ("tls.crt", "tls.key", "ca.crt")  # kubernetes.io/tls key names
    # as many compute threads as the CPU limit
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == container["resources"]["limits"]["cpu"]


@requires_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pod_runs_as_the_image_user_with_a_read_only_root_and_writable_scratch(kustomization: str) -> None:
    spec, container = node_pod(rendered(kustomization))
    uid = re.search(r"useradd [^&]*--uid (\d+)", "\n".join(rest for _, rest in _dockerfile()["map"])).group(1)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] and pod["runAsUser"] == int(uid) and pod["fsGroup"] == pod["runAsGroup"]
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}
    # what the node writes outside storage and output (benchmarks/serve_memory.py --trace-writes):
    # temporary files and Python/matplotlib caches; HOME and the caches point into the /tmp volume
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [m["mountPath"] for m in container["volumeMounts"]
                if not m.get("readOnly") and (m["name"] not in volumes or "emptyDir" in volumes[m["name"]])]
    assert "/tmp" in writable
    env = {item["name"]: item["value"] for item in container["env"]}
    for variable in ("HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME"):
        assert any(Path(env[variable]).is_relative_to(path) for path in writable), variable


@requires_kubectl
def test_resources_cover_the_measured_peak_with_room_for_a_probe() -> None:
    for documents in map(rendered, KUSTOMIZATIONS):
        _, container = node_pod(documents)
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        # a probe (`xiqa health`, ~80 MiB) runs inside the container's limit beside the node
        assert quantity_mib(requests["memory"]) >= MEASURED_PEAK_MIB
        assert quantity_mib(limits["memory"]) >= 1.25 * MEASURED_PEAK_MIB
        assert float(requests["cpu"]) <= float(limits["cpu"])


@requires_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_services_select_the_node_and_reach_its_named_ports(kustomization: str) -> None:
    documents = rendered(kustomization)
    statefulset = one(documents, "StatefulSet", "xiqa")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    _, container = node_pod(documents)
    names = {port["name"] for port in container["ports"]}
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    assert {port["targetPort"] for port in services["xiqa-dicom"]["spec"]["ports"]} == {"dicom"}
    assert {port["targetPort"] for port in services["xiqa-metrics"]["spec"]["ports"]} == {"metrics"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= names
    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    disruption = one(documents, "PodDisruptionBudget")
    assert disruption["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # the pod's grace period covers the study in progress that SIGTERM lets finish
    assert statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 120


@requires_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_network_policy_admits_the_configured_callers_and_reaches_only_the_configured_pacs(
        kustomization: str, tmp_path: Path) -> None:
    documents = rendered(kustomization)
    settings, _ = settings_of(documents, tmp_path)
    policy = one(documents, "NetworkPolicy", "xiqa")["spec"]
    labels = one(documents, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    dicom_rules = [r for r in policy["ingress"] if {p["port"] for p in r["ports"]} == {settings.port}]
    assert len(dicom_rules) == 1
    callers = [ipaddress.ip_network(peer["ipBlock"]["cidr"]) for peer in dicom_rules[0]["from"]]
    for host in settings.allowed_hosts:
        if host != "127.0.0.1":  # the probes, which do not cross the network
            assert any(ipaddress.ip_address(host) in block for block in callers), host
    metrics_rules = [r for r in policy["ingress"]
                     if {p["port"] for p in r["ports"]} == {settings.metrics_port}]
    assert len(metrics_rules) == 1 and "namespaceSelector" in metrics_rules[0]["from"][0]
    assert settings.forward
    for destination in settings.forward:
        pacs = ipaddress.ip_address(destination.host)
        reachable = [rule for rule in policy["egress"]
                     if destination.port in {p["port"] for p in rule["ports"]}
                     and any(pacs in ipaddress.ip_network(peer["ipBlock"]["cidr"])
                             for peer in rule["to"] if "ipBlock" in peer)]
        assert reachable, str(destination)
        # the PACS may also send (C-STORE of priors, re-sends): it is among the admitted callers
        assert any(pacs in block for block in callers)
    others = [rule for rule in policy["egress"] if not any("ipBlock" in peer for peer in rule["to"])]
    assert all({p["port"] for p in rule["ports"]} == {53} for rule in others)  # DNS only


def test_spool_drain_pod_runs_the_node_like_the_statefulset_without_a_service() -> None:
    statefulset = yaml.safe_load((DEPLOY / "base" / "statefulset.yaml").read_text())
    node = statefulset["spec"]["template"]["spec"]
    drain = yaml.safe_load((DEPLOY / "recovery" / "spool-drain-pod.yaml").read_text())["spec"]
    keys = ("image", "args", "env", "resources", "securityContext")
    assert {k: drain["containers"][0][k] for k in keys} == {k: node["containers"][0][k] for k in keys}
    assert drain["securityContext"].items() <= node["securityContext"].items()
    mounts = lambda c: {(m["name"], m["mountPath"]) for m in c["volumeMounts"]}  # noqa: E731
    assert mounts(drain["containers"][0]) == mounts(node["containers"][0])
    (claim,) = [v for v in drain["volumes"] if "persistentVolumeClaim" in v]
    template = statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert re.fullmatch(rf"{template}-{statefulset['metadata']['name']}-\d+",
                        claim["persistentVolumeClaim"]["claimName"])
    pod_labels = yaml.safe_load((DEPLOY / "recovery" / "spool-drain-pod.yaml").read_text())["metadata"][
        "labels"]
    for path in (DEPLOY / "base").glob("service-*.yaml"):  # no Service sends new instances to it
        selector = yaml.safe_load(path.read_text())["spec"]["selector"]
        assert not selector.items() <= pod_labels.items(), path.name


# --------------------------------------------------------------------------- Argo WorkflowTemplate


def workflow_template() -> dict:
    return yaml.safe_load((MONAI_DEPLOY / "argo-workflowtemplate.yaml").read_text())


def workflow() -> dict:
    return json.loads((MONAI_DEPLOY / "xiqa-workflow.json").read_text())


def test_argo_workflow_template_round_trips_through_the_argo_models() -> None:
    from hera.workflows.models import WorkflowTemplate

    document = workflow_template()
    model = WorkflowTemplate.model_validate(document)
    # nothing unknown to Argo is dropped, nothing is coerced
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == document
    assert document["apiVersion"] == "argoproj.io/v1alpha1" and document["kind"] == "WorkflowTemplate"
    typo = copy.deepcopy(document)
    typo["spec"]["templates"][0]["container"]["imagee"] = "x"
    assert WorkflowTemplate.model_validate(typo).model_dump(by_alias=True, exclude_none=True,
                                                            mode="json") != typo


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_argo_container_and_its_pod_security_are_valid_kubernetes(version: str) -> None:
    (template,) = workflow_template()["spec"]["templates"]
    # Argo names the container "main" itself; Kubernetes requires the name
    container = {"name": "main", **template["container"]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "xiqa-map"},
           "spec": {"securityContext": template["securityContext"], "containers": [container]}}
    kubernetes_validate.validate(pod, version, strict=True)


def test_argo_template_runs_the_map_entry_point_on_the_artifacts_the_workflow_names() -> None:
    spec = workflow_template()["spec"]
    (template,) = spec["templates"]
    assert spec["entrypoint"] == template["name"]
    container = template["container"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert {env[variable] for variable, _ in MAP_DEFAULTS.values()} == {default for _, default in
                                                                       MAP_DEFAULTS.values()}
    inputs = {a["name"]: a["path"] for a in template["inputs"]["artifacts"]}
    outputs = {a["name"]: a["path"] for a in template["outputs"]["artifacts"]}
    assert inputs == {"input-dicom": env["HOLOSCAN_INPUT_PATH"]}
    assert outputs == {"xiqa-output": env["HOLOSCAN_OUTPUT_PATH"]}
    # the Argo plug-in maps task artifacts to template artifacts by name (mwm-workflow-spec.md)
    (argo_task,) = [t for t in workflow()["tasks"] if t["type"] == "argo"]
    assert {a["name"] for a in argo_task["artifacts"]["input"]} == set(inputs)
    assert {a["name"] for a in argo_task["artifacts"]["output"]} == set(outputs)
    assert argo_task["args"]["workflow_template_name"] == workflow_template()["metadata"]["name"]
    assert argo_task["args"]["namespace"] == workflow_template()["metadata"]["namespace"]
    entrypoint = " ".join(_json_form(dict(_dockerfile()["map"])["ENTRYPOINT"]))
    assert f"\n{entrypoint}\n" in container["args"][0]
    uid = re.search(r"useradd [^&]*--uid (\d+)", "\n".join(rest for _, rest in _dockerfile()["map"])).group(1)
    assert template["securityContext"]["runAsUser"] == int(uid)
    assert quantity_mib(container["resources"]["limits"]["memory"]) >= 1.25 * MEASURED_PEAK_MIB
    assert env["OMP_NUM_THREADS"] == container["resources"]["limits"]["cpu"]


def test_argo_wrapper_turns_a_gateway_payload_into_results_and_task_metadata(fixture_records,
                                                                            tmp_path: Path) -> None:
    """The template's script on a payload as the gateway stores it: instances, their .dcm.json
    sidecars and one broken instance; the python3 it calls is this environment's."""
    (template,) = workflow_template()["spec"]["templates"]
    payload = tmp_path / "input" / "series"
    payload.mkdir(parents=True)
    good = fixture_records[0].dicom_path
    shutil.copy(good, payload / "good.dcm")
    (payload / "good.dcm.json").write_text('{"00080060": {"vr": "CS", "Value": ["CR"]}}')
    (payload / "torn.dcm").write_bytes(b"DICM" * 10)
    env = {**os.environ, "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}",
           "HOLOSCAN_INPUT_PATH": str(tmp_path / "input"), "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "output"),
           "HOLOSCAN_MODEL_PATH": str(tmp_path / "no-models")}
    result = subprocess.run([*template["container"]["command"], template["container"]["args"][0]], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "torn.dcm: " in result.stderr and "good.dcm.json" not in result.stderr
    metadata = json.loads((tmp_path / "output" / "metadata.json").read_text())
    assert metadata == {"xiqa_exit_status": EXIT_REJECTED, "dicom_outputs": 3}
    assert len(list((tmp_path / "output").glob("*/report.json"))) == 1


# --------------------------------------------------------------------------- Workflow Manager workflow

#: fields of the contract models (JsonProperty names), Contracts/Models/*.cs
WORKFLOW_FIELDS = {"name": str, "version": str, "description": str, "informatics_gateway": dict,
                   "tasks": list, "dataRetentionDays": int, "predicate": list}
GATEWAY_FIELDS = {"ae_title": str, "data_origins": list, "export_destinations": list}
TASK_FIELDS = {"id": str, "description": str, "type": str, "args": dict, "task_destinations": list,
               "export_destinations": list, "artifacts": dict, "timeout_minutes": (int, float)}
ARTIFACT_FIELDS = {"name": str, "value": str, "mandatory": bool}
#: ValidationConstants.ValidTaskTypes and ArgoParameters.VaildParameters
TASK_TYPES = {"argo", "aide_clinical_review", "router", "export", "docker", "email", "remote_app_execution",
              "export_hl7"}
ARGO_ARGS = {"namespace", "server_url", "allow_insecure", "workflow_template_name", "timeoutSeconds",
             "apiToken", "endpoint", "username", "password", "exchange", "virtualHost", "resources",
             "parameters", "priority", "cpu", "memory", "gpu_required"}
CONTEXT_VALUE = re.compile(r"\{\{ context\.(input\.dicom|executions\.(?P<task>[A-Za-z0-9_-]+)\."
                           r"(artifacts\.(?P<artifact>[A-Za-z0-9_-]+)|output_dir)) \}\}(/\S*)?")


def _typed(document: dict, fields: dict, where: str) -> list[str]:
    errors = [f"{where}: unknown field {key!r}" for key in document if key not in fields]
    errors += [f"{where}: {key} must be {fields[key]}" for key, value in document.items()
               if key in fields and not isinstance(value, fields[key])]
    return errors


def workflow_errors(flow: dict) -> list[str]:
    """The Workflow Manager's checks of a workflow that need no database: WorkflowValidator's rules."""
    errors = _typed(flow, WORKFLOW_FIELDS, "workflow")
    gateway = flow.get("informatics_gateway") or {}
    errors += _typed(gateway, GATEWAY_FIELDS, "informatics_gateway")
    if not flow.get("name", "").strip():
        errors.append("Missing Workflow Name.")
    if not flow.get("version", "").strip():
        errors.append("Missing Workflow Version.")
    if not gateway:
        errors.append("Missing InformaticsGateway section.")
    elif not gateway.get("ae_title", "").strip() or len(gateway["ae_title"]) > 15:
        errors.append("AeTitle is required in the InformaticsGateaway section and must be under 16 "
                      "characters.")
    tasks = flow.get("tasks") or []
    if not tasks:
        errors.append("Workflow does not contain Tasks, please review Workflow.")
    ids = [task.get("id", "") for task in tasks]
    errors += [f"TaskId: '{i}' Contains Invalid Characters." for i in ids
               if not re.fullmatch(r"[a-zA-Z0-9-_]+", i)]
    errors += [f"Found duplicate task id '{i}'" for i in set(ids) if ids.count(i) > 1]
    destinations = [d["name"] for task in tasks for d in task.get("task_destinations", [])]
    errors += [f"Converging Tasks Destinations on task: {d}" for d in set(destinations)
               if destinations.count(d) > 1 or (ids and d == ids[0])]
    errors += [f"Task destination {d} is not a task" for d in destinations if d not in ids]
    errors += [f"Found Task(s) without any task destinations to it: {i}" for i in ids[1:]
               if i not in destinations]
    outputs = {task["id"]: {a["name"] for a in task.get("artifacts", {}).get("output", [])} for task in tasks}
    for task in tasks:
        errors += _task_errors(task, gateway, outputs)
    return errors


def _task_errors(task: dict, gateway: dict, outputs: dict[str, set[str]]) -> list[str]:
    where, kind = f"Task: '{task.get('id')}'", task.get("type", "").lower()
    errors = _typed(task, TASK_FIELDS, where)
    if kind not in TASK_TYPES:
        return [*errors, f"{where} has an invalid type"]
    artifacts = task.get("artifacts", {})
    errors += [f"{where} unknown field artifacts.{key}" for key in artifacts
               if key not in ("input", "output")]
    for artifact in artifacts.get("input", []) + artifacts.get("output", []):
        errors += _typed(artifact, ARTIFACT_FIELDS, f"{where} artifact")
    names = [a["name"] for a in artifacts.get("output", [])]
    if len(names) != len(set(names)):
        errors.append(f"{where} has multiple output names with the same value.")
    if kind != "router":
        errors += _input_errors(task, outputs)
    args = task.get("args", {})
    errors += [f"{where} args must be strings" for value in args.values() if not isinstance(value, str)]
    if kind == "argo":
        if "workflow_template_name" not in args:
            errors.append(f"{where} workflow_template_name must be specified")
        errors += [f"{where} args has invalid keys: {key}" for key in args if key not in ARGO_ARGS]
        if "cpu" in args and not (args["cpu"].isdigit() and int(args["cpu"]) >= 1):
            errors.append(f"{where} cpu must be a whole number greater than 0")
    if kind == "export":
        exports = [d["name"] for d in task.get("export_destinations", [])]
        if not exports:
            errors.append(f"{where} does not contain a destination.")
        if len(exports) != len(set(exports)):
            errors.append(f"{where} contains duplicate destinations.")
        errors += [f"{where} export_destination: '{name}' must be registered in the informatics_gateway "
                   "object." for name in exports if name not in gateway.get("export_destinations", [])]
    return errors


def _input_errors(task: dict, outputs: dict[str, set[str]]) -> list[str]:
    """Inputs need a name and a supported artifact variable naming another task's declared output."""
    where, inputs = f"Task: '{task['id']}'", task.get("artifacts", {}).get("input", [])
    if not inputs:
        return [f"{where} must have Input Artifacts specified."]
    errors = []
    for artifact in inputs:
        if not artifact.get("name", "").strip() or not artifact.get("value", "").strip():
            errors.append(f"{where} Input Artifacts must have a Name and a Value.")
            continue
        match = CONTEXT_VALUE.fullmatch(artifact["value"])
        if match is None:
            errors.append(f"{where} input {artifact['name']} is no supported artifact variable")
        elif match["task"] and (match["task"] == task["id"] or match["task"] not in outputs or (
                match["artifact"] and match["artifact"] not in outputs[match["task"]])):
            errors.append(f"{where} input {artifact['name']} refers to no earlier task output")
    return errors


def test_workflow_definition_passes_the_workflow_manager_rules() -> None:
    assert workflow_errors(workflow()) == []


@pytest.mark.parametrize(("change", "error"), [
    (lambda f: f["informatics_gateway"].update(ae_title="A_TITLE_TOO_LONG_"), "AeTitle is required"),
    (lambda f: f["tasks"][0]["args"].update(memory_gb="4"), "args has invalid keys: memory_gb"),
    (lambda f: f["tasks"][1]["export_destinations"].append({"name": "ELSEWHERE"}), "must be registered"),
    (lambda f: f["tasks"][0].update(task_destinations=[]), "without any task destinations"),
    (lambda f: f["tasks"][1]["artifacts"]["input"][0].update(
        value="{{ context.executions.xiqa-quality.artifacts.reports }}"), "refers to no earlier task output"),
    (lambda f: f["tasks"][0].update(type="Argo-Task"), "has an invalid type"),
    (lambda f: f.update(informatics_gatway={}), "unknown field 'informatics_gatway'"),
])
def test_workflow_rules_catch_what_the_workflow_manager_refuses(change, error: str) -> None:
    flow = workflow()
    change(flow)
    assert any(error in message for message in workflow_errors(flow)), workflow_errors(flow)


def test_export_condition_reads_the_metadata_the_argo_template_writes() -> None:
    (argo_task,) = [t for t in workflow()["tasks"] if t["type"] == "argo"]
    (template,) = workflow_template()["spec"]["templates"]
    for destination in argo_task["task_destinations"]:
        for condition in destination["conditions"]:
            key = re.fullmatch(rf"\{{\{{ context\.executions\.{argo_task['id']}\.result\.(\w+) \}}\}} > '0'",
                               condition).group(1)
            assert f'"{key}": %d' in template["container"]["args"][0]


# --------------------------------------------------------------------------- Informatics Gateway


def gateway_file(name: str) -> dict:
    return json.loads((MONAI_DEPLOY / "informatics-gateway" / name).read_text())


def test_informatics_gateway_configuration_routes_the_modalities_to_the_workflow_and_exports_to_the_pacs(
        tmp_path: Path) -> None:
    # MonaiApplicationEntity, SourceApplicationEntity, DestinationApplicationEntity (src/Api/...)
    application = gateway_file("monai-ae.json")
    assert set(application) <= {"name", "aeTitle", "grouping", "workflows", "plugInAssemblies",
                                "ignoredSopClasses", "allowedSopClasses", "timeout"}
    folder = MONAI_DEPLOY / "informatics-gateway"
    sources = [gateway_file(p.name) for p in sorted(folder.glob("source-*.json"))]
    (destination,) = [gateway_file(p.name) for p in folder.glob("destination-*.json")]
    for source in sources:
        assert set(source) == {"name", "aeTitle", "hostIp"}
    assert set(destination) == {"name", "aeTitle", "hostIp", "port"}
    flow = workflow()["informatics_gateway"]
    # the Workflow Manager picks workflows by called AE title and calling AE title (data_origins)
    # when the gateway's AE names no workflow ids (WorkflowRepository.GetWorkflowsForWorkflowRequestAsync)
    assert application["workflows"] == [] and application["aeTitle"] == flow["ae_title"]
    assert application["grouping"] == "0020,000D"  # one payload per study
    assert set(flow["data_origins"]) == {source["aeTitle"] for source in sources}
    assert flow["export_destinations"] == [destination["name"]]
    assert set(application["allowedSopClasses"]) == set(SUPPORTED_SOP_CLASSES)
    # the same site as the node's overlay: same modalities, same PACS
    if KUBECTL is not None:
        settings, _ = settings_of(rendered("overlays/example-site"), tmp_path)
        (pacs,) = settings.forward
        assert (destination["aeTitle"], destination["hostIp"], destination["port"]) == (
            pacs.ae_title, pacs.host, pacs.port)
        assert {source["hostIp"] for source in sources} <= set(settings.allowed_hosts)
        assert {source["aeTitle"] for source in sources} <= set(settings.allowed_ae_titles)
