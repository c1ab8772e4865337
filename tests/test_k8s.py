"""The Kubernetes manifests (k8s/): every overlay rendered as `kubectl kustomize` renders it, and
the policies we promise checked on the rendered objects. Offline: no cluster, no network.

Each policy is a function of the rendered objects that returns its violations; the real overlays
must have none, and a breach planted in a copy of the dev overlay must be reported (so no check
passes vacuously). Without kubectl every test here is skipped, as k8s/validate.sh skips.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from catsdogs_pl import places
from tests.helpers.deployment import COMPOSE_FILE, compose_config, tool

K8S = places.ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
INFERENCE_PORT = 8080
MANAGEMENT_PORT = 8081
MANAGEMENT_SERVICE = "torchserve-management"
# KServe's InferenceService (k8s/components/kserve) is a server whose predictor is a pod spec
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "InferenceService"}
SERVERS = {"Deployment", "StatefulSet", "DaemonSet", "InferenceService"}  # probes required
# a name segment that marks an env var as secret-bearing (POSTGRES_PASSWORD, API_KEY, ...)
SECRET_WORDS = {"PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "APIKEY", "CREDENTIALS"}
Objects = list[dict[str, Any]]

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed: it renders the overlays"
)


def render(overlay: str) -> Objects:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Objects]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


# --- what the rendered objects contain


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "InferenceService":
        return obj["spec"]["predictor"]
    return obj["spec"]["template"]["spec"]


def workloads(objects: Objects) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in WORKLOADS)


def containers(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, container) of a workload, init containers included."""
    spec = pod_spec(obj)
    for field in ("initContainers", "containers"):
        for c in spec.get(field, []):
            yield f"{obj['kind']}/{obj['metadata']['name']} {field}/{c['name']}", c


def long_running(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The containers that serve while the pod lives: a server's containers and its sidecars
    (init containers with restartPolicy Always); plain init containers and Jobs run to the end."""
    if obj["kind"] not in SERVERS:
        return
    for where, c in containers(obj):
        if "initContainers/" not in where or c.get("restartPolicy") == "Always":
            yield where, c


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj["spec"].get("template", {}).get("metadata", {}).get("labels", {})


def selected_ports(service: dict[str, Any], objects: Objects) -> list[dict[str, Any]]:
    """Every container port entry of the pods a Service selects."""
    selector = service["spec"].get("selector", {})
    return [
        p
        for w in workloads(objects)
        if labels_match(selector, pod_labels(w))
        for _, c in containers(w)
        for p in c.get("ports", [])
    ]


def pod_ports(service: dict[str, Any], objects: Objects) -> set[int]:
    """Every container port of the pods a Service selects."""
    return {p["containerPort"] for p in selected_ports(service, objects)}


def service_target_ports(service: dict[str, Any], objects: Objects) -> set[int]:
    """The container ports a Service reaches (named target ports looked up in its pods)."""
    named = {p["name"]: p["containerPort"] for p in selected_ports(service, objects) if "name" in p}
    found = set()
    for port in service["spec"].get("ports", []):
        target = port.get("targetPort", port["port"])
        found.add(named.get(target, -1) if isinstance(target, str) else target)
    return found


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


# --- the policies: each returns its violations


def missing_probes(objects: Objects) -> list[str]:
    return [
        f"{where}: no {probe}"
        for obj in objects
        for where, c in long_running(obj)
        for probe in ("readinessProbe", "livenessProbe")
        if probe not in c
    ]


def missing_resources(objects: Objects) -> list[str]:
    return [
        f"{where}: no {kind}.{resource}"
        for obj in workloads(objects)
        for where, c in containers(obj)
        for kind in ("requests", "limits")
        for resource in ("cpu", "memory")
        if resource not in c.get("resources", {}).get(kind, {})
    ]


def unprivileged(objects: Objects) -> list[str]:
    """runAsNonRoot (container or pod level), no privilege escalation, every capability dropped."""
    found = []
    for obj in workloads(objects):
        pod = pod_spec(obj).get("securityContext", {})
        for where, c in containers(obj):
            sc = c.get("securityContext", {})
            if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
                found.append(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod.get("runAsUser")) == 0:
                found.append(f"{where}: runAsUser 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                found.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                found.append(f"{where}: privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                found.append(f"{where}: capabilities not dropped (drop: [ALL])")
    return found


def management_exposed(objects: Objects) -> list[str]:
    """8081 only on the management Service, and that one only inside the cluster."""
    found = []
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    if MANAGEMENT_SERVICE not in names:
        found.append(f"no Service {MANAGEMENT_SERVICE}")
    for svc in (o for o in objects if o["kind"] == "Service"):
        name, spec = svc["metadata"]["name"], svc["spec"]
        ports = {p["port"] for p in spec.get("ports", [])} | service_target_ports(svc, objects)
        if name == MANAGEMENT_SERVICE:
            if spec.get("type", "ClusterIP") != "ClusterIP":
                found.append(f"Service/{name} is {spec['type']}: management must stay internal")
        elif MANAGEMENT_PORT in ports:
            found.append(f"Service/{name} exposes {MANAGEMENT_PORT}")
        elif MANAGEMENT_PORT in pod_ports(svc, objects) and ports != {INFERENCE_PORT}:
            found.append(f"Service/{name} of the TorchServe pods exposes more than inference")
    return found


def management_unrestricted(objects: Objects) -> list[str]:
    """A NetworkPolicy on the TorchServe pods admits 8081 only from pods of a Job (the deploy
    step), never from anyone, another namespace or an address block."""
    servers = [
        w
        for w in workloads(objects)
        for _, c in containers(w)
        if any(p.get("containerPort") == MANAGEMENT_PORT for p in c.get("ports", []))
    ]
    jobs = [pod_labels(w) for w in workloads(objects) if w["kind"] == "Job"]
    others = [pod_labels(w) for w in workloads(objects) if w["kind"] != "Job"]
    found = []
    for server in servers:
        where = f"{server['kind']}/{server['metadata']['name']}"
        policies = [
            p
            for p in objects
            if p["kind"] == "NetworkPolicy"
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
            and labels_match(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels(server))
        ]
        if not policies:
            found.append(f"{where}: no NetworkPolicy restricts its ingress")
        for policy in policies:
            for rule in policy["spec"].get("ingress", []):
                ports = rule.get("ports", [])
                if ports and not any(
                    p.get("port") in (MANAGEMENT_PORT, "management") for p in ports
                ):
                    continue  # this rule does not open 8081
                peers = rule.get("from", [])
                admitted = [peer.get("podSelector", {}).get("matchLabels", {}) for peer in peers]
                if (
                    not peers
                    or any(set(peer) - {"podSelector"} for peer in peers)
                    or not all(any(labels_match(a, j) for j in jobs) for a in admitted)
                    or any(labels_match(a, o) for a in admitted for o in others)
                ):
                    found.append(
                        f"NetworkPolicy/{policy['metadata']['name']} admits {MANAGEMENT_PORT} "
                        f"beyond the deploy job: {peers or 'from anyone'}"
                    )
    return found


def bad_autoscalers(objects: Objects) -> list[str]:
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    found = [] if hpas else ["no HorizontalPodAutoscaler"]
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    for hpa in hpas:
        name = hpa["metadata"]["name"]
        if hpa["apiVersion"] != "autoscaling/v2":
            found.append(f"HPA/{name} is {hpa['apiVersion']}, not autoscaling/v2")
        if hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
            found.append(f"HPA/{name} scales a Deployment that is not rendered")
        kinds = {m["type"] for m in hpa["spec"].get("metrics", [])}
        if not {"Pods", "Resource"} <= kinds:
            found.append(f"HPA/{name}: wants a serving-load (Pods) metric and CPU, has {kinds}")
    return found


def compose_images() -> tuple[set[str], set[str]]:
    """(names of the images compose builds from the Dockerfile, other images compose runs as
    name:tag), as `docker compose config` resolves them with its defaults: the image variables
    set empty, so a stand-in image exported on a CI host (CATSDOGS_POSTGRES_IMAGE=...) does not
    replace the name the manifests use."""
    variables = set(re.findall(r"\$\{(CATSDOGS_\w+):-", COMPOSE_FILE.read_text()))
    services = compose_config(**dict.fromkeys(variables, ""))["services"].values()
    built = {s["image"].rsplit(":", 1)[0] for s in services if "build" in s}
    pulled = {s["image"] for s in services if "build" not in s}
    return built, pulled


def foreign_images(objects: Objects) -> list[str]:
    """Our images under any registry and tag; anything else exactly as compose runs it."""
    built, pulled = compose_images()
    found = []
    for obj in workloads(objects):
        for where, c in containers(obj):
            image = c["image"]
            name = image.rsplit("/", 1)[-1].split(":", 1)[0]
            if name not in built and image not in pulled:
                found.append(f"{where}: {image} is neither built nor run by docker-compose.yml")
    return found


def missing_config_files(objects: Objects) -> list[str]:
    """Paths in the images' /app (where the Dockerfile copies configs/, handlers/ and the
    package) must exist in the repository."""
    found = []
    for obj in objects:
        for text in strings(obj):
            for path in re.findall(r"/app/[\w./-]+", text):
                if not (places.ROOT / path.removeprefix("/app/")).exists():
                    found.append(
                        f"{obj['kind']}/{obj['metadata']['name']}: {path} is not in the repo"
                    )
    return found


def literal_secrets(objects: Objects) -> list[str]:
    """Secrets only by reference: no Secret carries data, no secret-named variable a value (a
    true/false switch carries no secret, nor the path of a file in a mounted volume)."""
    found = [
        f"Secret/{o['metadata']['name']} carries {field}"
        for o in objects
        if o["kind"] == "Secret"
        for field in ("data", "stringData")
        if o.get(field)
    ]
    for obj in workloads(objects):
        for where, c in containers(obj):
            mounted = {str(Path(m["mountPath"])) for m in c.get("volumeMounts", [])}
            for env in c.get("env", []):
                words = set(env["name"].upper().split("_"))
                value = env.get("value")
                if value is None or value in ("true", "false"):
                    continue
                if words & SECRET_WORDS and str(Path(value).parent) not in mounted:
                    found.append(f"{where}: {env['name']} has a literal value")
    return found


SIGNING_SECRET, VERIFY_MAP = "catsdogs-signing-key", "catsdogs-verify-key"
VERIFIERS = (  # the containers that load versions: each verifies them with the public key
    "Deployment/torchserve containers/torchserve",
    "InferenceService/catsdogs containers/kserve-container",
)


def exposed_signing_key(objects: Objects) -> list[str]:
    """The private key's Secret mounted by the train Job's `fit` alone (it signs); the servers
    verify with the public key's ConfigMap, mounted where CATSDOGS_VERIFY_KEY points."""
    found = []
    for obj in workloads(objects):
        spec = pod_spec(obj)
        sources = {
            v["name"]: v.get("secret", {}).get("secretName") or v.get("configMap", {}).get("name")
            for v in spec.get("volumes", [])
        }
        for where, c in containers(obj):
            mounted = {m["mountPath"]: sources.get(m["name"]) for m in c.get("volumeMounts", [])}
            if (
                SIGNING_SECRET in mounted.values()
                and where != "Job/catsdogs-train initContainers/fit"
            ):
                found.append(f"{where} mounts the private signing key")
            if where in VERIFIERS:
                key = next(
                    (e.get("value") for e in c["env"] if e["name"] == "CATSDOGS_VERIFY_KEY"), ""
                )
                if mounted.get(str(Path(key).parent)) != VERIFY_MAP:
                    found.append(f"{where}: CATSDOGS_VERIFY_KEY={key!r} is not in {VERIFY_MAP}")
    return found


POLICIES: dict[str, Callable[[Objects], list[str]]] = {
    "probes": missing_probes,
    "resources": missing_resources,
    "unprivileged": unprivileged,
    "management_service": management_exposed,
    "management_policy": management_unrestricted,
    "autoscaler": bad_autoscalers,
    "images": foreign_images,
    "config_files": missing_config_files,
    "secrets": literal_secrets,
    "signing_key": exposed_signing_key,
}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("policy", POLICIES)
def test_overlay_keeps_policy(rendered: dict[str, Objects], overlay: str, policy: str) -> None:
    assert POLICIES[policy](rendered[overlay]) == []


# --- each policy catches a breach planted in the dev overlay


def find(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objects: Objects, kind: str, name: str, container_name: str) -> dict[str, Any]:
    spec = pod_spec(find(objects, kind, name))
    everyone = spec.get("initContainers", []) + spec["containers"]
    return next(c for c in everyone if c["name"] == container_name)


def drop_readiness(o: Objects) -> None:
    del container(o, "Deployment", "torchserve", "torchserve")["readinessProbe"]


def drop_init_limits(o: Objects) -> None:
    del container(o, "Job", "catsdogs-train", "fit")["resources"]["limits"]


def escalate(o: Objects) -> None:
    container(o, "StatefulSet", "postgres", "postgres")["securityContext"][
        "allowPrivilegeEscalation"
    ] = True


def keep_capabilities(o: Objects) -> None:
    del container(o, "Job", "catsdogs-train", "fit")["securityContext"]["capabilities"]


def run_as_root(o: Objects) -> None:
    pod_spec(find(o, "Deployment", "mlflow"))["securityContext"]["runAsNonRoot"] = False


def publish_management(o: Objects) -> None:
    ports = find(o, "Service", "torchserve")["spec"]["ports"]
    ports.append({"name": "admin", "port": 9000, "targetPort": "management"})


def publish_metrics(o: Objects) -> None:
    ports = find(o, "Service", "torchserve")["spec"]["ports"]
    ports.append({"name": "metrics", "port": 8082, "targetPort": "metrics"})


def node_port_management(o: Objects) -> None:
    find(o, "Service", MANAGEMENT_SERVICE)["spec"]["type"] = "NodePort"


def open_management(o: Objects) -> None:
    for rule in find(o, "NetworkPolicy", "torchserve")["spec"]["ingress"]:
        rule.pop("from", None)


def admit_mlflow(o: Objects) -> None:
    for rule in find(o, "NetworkPolicy", "torchserve")["spec"]["ingress"]:
        for peer in rule.get("from", []):
            if "podSelector" in peer:
                peer["podSelector"]["matchLabels"] = {"app.kubernetes.io/name": "mlflow"}


def old_hpa(o: Objects) -> None:
    find(o, "HorizontalPodAutoscaler", "torchserve")["apiVersion"] = "autoscaling/v1"


def foreign_image(o: Objects) -> None:
    container(o, "Deployment", "mlflow", "mlflow")["image"] = "ghcr.io/mlflow/mlflow:v3.1.0"


def missing_config(o: Objects) -> None:
    env = container(o, "Job", "catsdogs-train", "fit")["env"]
    next(e for e in env if e["name"] == "FIT_CONFIG")["value"] = "/app/configs/nope.yaml"


def literal_password(o: Objects) -> None:
    env = container(o, "Deployment", "mlflow", "mlflow")["env"]
    next(e for e in env if e["name"] == "POSTGRES_PASSWORD").update(value="mlflow")


def secret_object(o: Objects) -> None:
    o.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db"},
            "stringData": {"password": "mlflow"},
        }
    )


def sign_on_torchserve(o: Objects) -> None:
    spec = pod_spec(find(o, "Deployment", "torchserve"))
    spec["volumes"].append({"name": "key", "secret": {"secretName": SIGNING_SECRET}})
    spec["containers"][0]["volumeMounts"].append({"name": "key", "mountPath": "/etc/key"})


def verify_with_nothing(o: Objects) -> None:
    env = container(o, "Deployment", "torchserve", "torchserve")["env"]
    env[:] = [e for e in env if e["name"] != "CATSDOGS_VERIFY_KEY"]


BREACHES = {
    "probes": [drop_readiness],
    "resources": [drop_init_limits],
    "unprivileged": [escalate, keep_capabilities, run_as_root],
    "management_service": [publish_management, publish_metrics, node_port_management],
    "management_policy": [open_management, admit_mlflow],
    "autoscaler": [old_hpa],
    "images": [foreign_image],
    "config_files": [missing_config],
    "secrets": [literal_password, secret_object],
    "signing_key": [sign_on_torchserve, verify_with_nothing],
}


@pytest.mark.parametrize(
    ("policy", "breach"),
    [(p, b) for p, breaches in BREACHES.items() for b in breaches],
    ids=lambda x: x if isinstance(x, str) else x.__name__,
)
def test_policy_reports_a_breach(
    rendered: dict[str, Objects], policy: str, breach: Callable[[Objects], None]
) -> None:
    objects = copy.deepcopy(rendered["dev"])
    breach(objects)
    assert POLICIES[policy](objects), f"{policy} did not report {breach.__name__}"


def test_every_policy_has_a_breach() -> None:
    assert set(BREACHES) == set(POLICIES)


# --- what differs between the overlays, and the Secrets users create


def test_postgres_in_dev_only_and_mlflow_db_by_secret(rendered: dict[str, Objects]) -> None:
    for overlay, objects in rendered.items():
        statefulsets = {o["metadata"]["name"] for o in objects if o["kind"] == "StatefulSet"}
        assert statefulsets == ({"postgres"} if overlay == "dev" else set()), overlay
        env = container(objects, "Deployment", "mlflow", "mlflow")["env"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env}
        assert refs["POSTGRES_HOST"] == refs["POSTGRES_PASSWORD"] == "catsdogs-mlflow-db"


def test_every_referenced_secret_is_created_in_the_readme(rendered: dict[str, Objects]) -> None:
    readme = (K8S / "README.md").read_text()
    created = set(
        re.findall(r"kubectl (?:-n \S+ )?create (?:secret generic|configmap) (\S+)", readme)
    )
    for objects in rendered.values():
        for obj in workloads(objects):
            for volume in pod_spec(obj).get("volumes", []):
                name = volume.get("secret", {}).get("secretName") or volume.get(
                    "configMap", {}
                ).get("name")
                assert name is None or name in created, f"{name} not in k8s/README.md"
            for where, c in containers(obj):
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] in created, (
                            f"{where}: {ref['name']} not in k8s/README.md"
                        )


def test_prod_pins_the_project_version(rendered: dict[str, Objects]) -> None:
    version = re.search(r'^version = "(.+)"', (places.ROOT / "pyproject.toml").read_text(), re.M)
    for obj in workloads(rendered["prod"]):
        for where, c in containers(obj):
            assert c["image"].endswith(f":{version.group(1)}"), where


# --- the validator of `make lint`


def validator_env() -> dict[str, str]:
    venv_bin = Path(tool("kubernetes-validate") or "kubernetes-validate").parent
    return {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}


needs_validator = pytest.mark.skipif(
    tool("kubernetes-validate") is None, reason="kubernetes-validate is not installed (dev extras)"
)


@needs_validator
def test_validator_passes_every_overlay(rendered: dict[str, Objects]) -> None:
    out = subprocess.run(
        ["bash", str(K8S / "validate.sh")], capture_output=True, text=True, env=validator_env()
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for overlay, objects in rendered.items():
        for obj in objects:
            line = f"{overlay}.yaml passed for resource {obj['kind'].lower()}/{obj['metadata']['name']}"
            # a custom resource (the PodMonitor) has no schema here: warned about, not failed
            crd = f"schema for kind {obj['kind']} with api version {obj['apiVersion']}"
            assert line in out.stdout or crd in out.stdout, line


@needs_validator
def test_validator_refuses_an_unknown_field(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [service.yaml]\n")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetport": 8080}]},
    }  # targetPort misspelt
    (tmp_path / "service.yaml").write_text(yaml.safe_dump(service))
    out = subprocess.run(
        ["bash", str(K8S / "validate.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=validator_env(),
    )
    assert out.returncode != 0, out.stdout
    assert "targetport" in out.stdout + out.stderr, out.stdout + out.stderr
