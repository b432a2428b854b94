"""deploy/kubernetes: the kustomize base and its overlays, rendered and checked.

No cluster runs where the tests run, so each overlay is rendered as `kubectl
apply -k` renders it (`kubectl kustomize`), in a copy of the files git would
commit with test secrets written where the operator's go. Every rendered
object is validated against the Kubernetes API's JSON schemas
(kubernetes-validate, strict: an unknown field is an error) and KEDA's
objects against KEDA's own CRDs (vendored in tests/data/keda, see its
README). Then the promises are checked one by one: each Procfile process
runs as a Deployment with the Procfile's command, the release line as a
Job, probes, autoscalers and disruption budgets are where they belong, every
container is locked down, no secret value is committed, and the
NetworkPolicies let each process reach what the compose networks let it
reach and nothing more, but the user app the auth app's JWKS.

kubectl must be installed (kustomize v5 inside, kubectl 1.27 or newer): a
missing or older one fails these tests with how to install it.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT
from tests.test_compose import UnsetVariable, interpolate

KUBERNETES = ROOT / "deploy" / "kubernetes"
KEDA_CRDS = ROOT / "tests" / "data" / "keda"
OVERLAYS = ("development", "production")

# Validated against the oldest Kubernetes these manifests claim and the newest
# kubernetes-validate knows, so neither a field too new nor one removed slips by.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())
KEDA_KINDS = {
    "ScaledObject": "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
}
KUSTOMIZE_MAJOR = 5

# `web` is the PaaS form of `auth` and `user` (APP=auth|user), which run as
# Deployments of their own; `mailsink` is `make run`'s development mail printer
# (a cluster sends to a real SMTP server); `release` is the Job.
PROCFILE_ONLY = {"web", "mailsink"}
RELEASE = "release"

WEB_APPS = {"auth": 5001, "user": 5002}
CONSUMERS = {"auth_worker": "AUTH_QUEUE", "user_worker": "USER_QUEUE"}
# The series each relay and the mailer reports its lag in (CONTRACT.md: outbox
# rows pending and the age of the oldest; mails waiting).
LAGGING = {
    "auth_relay": (
        'outbox_pending_rows{outbox="auth"}',
        'outbox_oldest_pending_age_seconds{outbox="auth"}',
    ),
    "user_relay": (
        'outbox_pending_rows{outbox="user"}',
        'outbox_oldest_pending_age_seconds{outbox="user"}',
    ),
    "mailer": ("mail_pending", "mail_oldest_pending_age_seconds"),
}
METRICS_PORT = 9100
# The one writable place in a pod: an emptyDir, not a path these tests write to.
POD_TMP = "/tmp"  # noqa: S108
AUTH_SIDE = ("auth", "auth_relay", "auth_worker", "mailer", "auth_janitor")
# The processes that load the auth service's settings, and so check the pepper
# (the mailer reads only the database URL and SMTP_URL, and gets no pepper).
PEPPER_CHECKERS = ("auth", "auth_relay", "auth_worker", "auth_janitor")
USER_SIDE = ("user", "user_relay", "user_worker", "user_janitor")
# One replica each, on a schedule: nothing to scale on.
JANITORS = ("auth_janitor", "user_janitor")

# Who reaches which of the things outside (the overlay's Externals object
# names where each is). The compose networks, narrowed to what each process
# uses: the auth relay and the mailer have no Redis URL, the web apps no broker.
REACHES = {
    "authDatabase": {"auth", "auth_relay", "auth_worker", "mailer", "auth_janitor", RELEASE},
    "userDatabase": {"user", "user_relay", "user_worker", "user_janitor", RELEASE},
    "redis": {"auth", "auth_worker"},
    "rabbitmq": {"auth_relay", "auth_worker", "user_relay", "user_worker"},
    "smtp": {"mailer"},
}

# Variables whose values are secrets (or, for the public key, kept beside them):
# they come from a Secret, never from a literal or the ConfigMap.
SECRET_VARIABLES = {
    "AUTH_DATABASE_URL",
    "USER_DATABASE_URL",
    "REDIS_URL",
    "RABBITMQ_URL",
    "PASSWORD_PEPPER",
    "KEY_ENCRYPTION_KEY",
    "JWT_PRIVATE_KEY",
    "JWT_PUBLIC_KEY",
    "INTROSPECTION_CLIENTS",
    "SMTP_URL",
}
# Test values for what the production examples leave empty on purpose.
TEST_SECRET_VALUES = {
    "PASSWORD_PEPPER": "a-pepper-of-this-test-deployment",
    "KEY_ENCRYPTION_KEY": base64.b64encode(b"the key encryption key of tests!").decode(),
    "INTROSPECTION_CLIENTS": "resource-server:its-test-secret",
}


# --- kubectl ---------------------------------------------------------------------

INSTALL_KUBECTL = (
    "install kubectl 1.27 or newer (kustomize v5 inside): the Kubernetes project's "
    "packages (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/) or the "
    "cloud SDK's `kubectl` package. Debian 12's own `kubernetes-client` is kubectl 1.20, "
    "whose kustomize v2 cannot build these overlays (components, replacements)."
)


def kustomize_version(kubectl: str) -> tuple[int, ...]:
    """The kustomize version built into ``kubectl``, as numbers."""
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True
    )
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "v0")
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


@pytest.fixture(scope="module")
def kubectl() -> str:
    """kubectl's path, after checking that its kustomize can build the overlays."""
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(f"kubectl is not installed: {INSTALL_KUBECTL}")
    version = kustomize_version(path)
    if version[:1] < (KUSTOMIZE_MAJOR,):
        found = "v" + ".".join(map(str, version)) if any(version) else "no version"
        pytest.fail(
            f"{path} has no kustomize v{KUSTOMIZE_MAJOR} (it reports {found}): {INSTALL_KUBECTL}"
        )
    return path


def kustomize(kubectl: str, directory: Path) -> list[dict]:
    """``kubectl kustomize directory``, parsed; a failure raises with kustomize's message."""
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        raise KustomizeError(result.stderr.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class KustomizeError(Exception):
    """``kubectl kustomize`` refused to build."""


# --- the tree, as committed, with test secrets -----------------------------------


def committed_files() -> list[str]:
    """deploy/kubernetes's files that git would commit (tracked, or new and not ignored)."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "."],
        cwd=KUBERNETES,
        capture_output=True,
        text=True,
    )
    if listing.returncode != 0:
        pytest.fail(f"git could not list deploy/kubernetes: {listing.stderr.strip()}")
    return [name for name in listing.stdout.split("\0") if name and (KUBERNETES / name).exists()]


def copy_committed(destination: Path) -> Path:
    """A copy of deploy/kubernetes without the files git ignores (a checkout's own secrets)."""
    for name in committed_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(KUBERNETES / name, target)
    return destination


def env_lines(path: Path) -> list[tuple[str, str]]:
    """``KEY=value`` lines of an env file, as kustomize reads them (comments skipped)."""
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value))
    return pairs


def write_test_secrets(overlay: Path, *, edited: bool = True) -> None:
    """The files an operator writes under ``secrets/``: each example, filled in.

    ``edited=False`` copies the examples as they are, as a careless operator would.
    """
    secrets = overlay / "secrets"
    secrets.mkdir(exist_ok=True)
    for example in secrets.glob("*.example"):
        lines = []
        for key, value in env_lines(example):
            if edited:
                value = value.replace("REPLACE-ME", "test-value") or TEST_SECRET_VALUES.get(key, "")
                assert value, f"{example.name} leaves {key} empty and the test has no value for it"
            lines.append(f"{key}={value}\n")
        (secrets / example.name.removesuffix(".example")).write_text("".join(lines))


@pytest.fixture(scope="module")
def rendered(kubectl, tmp_path_factory) -> dict[str, list[dict]]:
    """Each overlay, rendered from a committed copy with test secrets in place."""
    tree = copy_committed(tmp_path_factory.mktemp("kubernetes"))
    renders = {}
    for name in OVERLAYS:
        write_test_secrets(tree / "overlays" / name)
        renders[name] = kustomize(kubectl, tree / "overlays" / name)
    return renders


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> str:
    """Each overlay's name in turn."""
    return request.param


@pytest.fixture(scope="module")
def objects(rendered, overlay) -> list[dict]:
    """One overlay's rendered objects."""
    return rendered[overlay]


@pytest.fixture(scope="module")
def externals(overlay) -> dict:
    """The overlay's Externals object: where the engines, SMTP, DNS and Prometheus are."""
    docs = yaml.safe_load_all((KUBERNETES / "overlays" / overlay / "externals.yaml").read_text())
    [doc] = [d for d in docs if d and d.get("kind") == "Externals"]
    return doc["spec"]


# --- reading the rendered objects -------------------------------------------------


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    """The objects of one kind, by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def by_name(objects: list[dict], kind: str, prefix: str) -> dict:
    """The one object of ``kind`` named ``prefix``, or ``prefix-<hash>`` as generators name it."""
    matches = [
        o
        for name, o in of_kind(objects, kind).items()
        if name == prefix or re.fullmatch(re.escape(prefix) + r"-[a-z0-9]{10}", name)
    ]
    assert len(matches) == 1, f"{len(matches)} {kind} objects named {prefix}"
    return matches[0]


def pod_templates(objects: list[dict]) -> dict[str, dict]:
    """Every Deployment's and Job's pod template, by the process it runs (component label)."""
    templates = {}
    for o in objects:
        if o["kind"] in ("Deployment", "Job"):
            labels = o["spec"]["template"]["metadata"]["labels"]
            templates[process_of(labels)] = o["spec"]["template"]
    return templates


def process_of(labels: dict) -> str:
    """The Procfile name of the process whose pods carry ``labels``."""
    return labels["app.kubernetes.io/component"].replace("-", "_")


def container(template: dict) -> dict:
    """A pod template's one container."""
    [only] = template["spec"]["containers"]
    return only


def deployment_of(objects: list[dict], process: str) -> dict:
    """The Deployment running ``process``."""
    [match] = [
        o
        for o in of_kind(objects, "Deployment").values()
        if process_of(o["spec"]["template"]["metadata"]["labels"]) == process
    ]
    return match


def argv(container: dict) -> list[str]:
    """What a container runs: its command and arguments."""
    return list(container.get("command", [])) + list(container.get("args", []))


def literal_env(container: dict) -> dict[str, str]:
    """A container's environment variables given as literal values."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def resolved_env(objects: list[dict], container: dict) -> dict[str, str]:
    """A container's environment as Kubernetes builds it: ConfigMaps, then its own entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(of_kind(objects, "ConfigMap")[source["configMapRef"]["name"]]["data"])
        else:
            env.update(secret_data(of_kind(objects, "Secret")[source["secretRef"]["name"]]))
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secret_data(of_kind(objects, "Secret")[ref["name"]])[ref["key"]]
        else:
            ref = entry["valueFrom"]["configMapKeyRef"]
            env[entry["name"]] = of_kind(objects, "ConfigMap")[ref["name"]]["data"][ref["key"]]
    return env


def secret_data(secret: dict) -> dict[str, str]:
    """A Secret's values, decoded."""
    values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    return values


# --- the objects are valid Kubernetes and KEDA ------------------------------------


def strict_schema(schema: dict) -> dict:
    """A CRD's openAPIV3Schema as the API server applies it with strict field validation.

    An object with declared properties refuses any other (unless it preserves
    unknown fields), as ``kubectl apply --validate=strict`` does.
    """
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def keda_schemas() -> dict[str, tuple[str, dict]]:
    """Kind -> (apiVersion, strict schema) from KEDA's vendored CRDs."""
    schemas = {}
    for kind, filename in KEDA_KINDS.items():
        crd = yaml.safe_load((KEDA_CRDS / filename).read_text())
        assert crd["spec"]["names"]["kind"] == kind
        [version] = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
        api_version = f"{crd['spec']['group']}/{version['name']}"
        schemas[kind] = (api_version, strict_schema(version["schema"]["openAPIV3Schema"]))
    return schemas


def schema_errors(document: dict, keda_schemas: dict) -> list[str]:
    """Every reason the API server (with KEDA installed) would refuse ``document``."""
    name = f"{document['kind']}/{document['metadata']['name']}"
    if document["kind"] in keda_schemas:
        api_version, schema = keda_schemas[document["kind"]]
        if document["apiVersion"] != api_version:
            return [f"{name}: apiVersion {document['apiVersion']}, KEDA serves {api_version}"]
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)
        ]
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(map(str, error.path))
            errors.append(f"{name} (Kubernetes {version}): {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{name}: {error.message}")
    return errors


def test_every_rendered_object_is_valid_kubernetes_or_keda(objects, keda_schemas):
    errors = [error for document in objects for error in schema_errors(document, keda_schemas)]
    assert errors == []


def test_the_schemas_refuse_a_misspelt_field_and_a_wrong_type(objects, keda_schemas):
    deployment = copy.deepcopy(deployment_of(objects, "auth"))
    probe = container(deployment["spec"]["template"]).pop("readinessProbe")
    container(deployment["spec"]["template"])["readinesProbe"] = probe
    scaled = copy.deepcopy(next(iter(of_kind(objects, "ScaledObject").values())))
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    trigger_auth = copy.deepcopy(next(iter(of_kind(objects, "TriggerAuthentication").values())))
    trigger_auth["spec"]["secretTargetRef"][0]["key"] = 7

    assert any("readinesProbe" in e for e in schema_errors(deployment, keda_schemas))
    assert any("maxReplicas" in e for e in schema_errors(scaled, keda_schemas))
    assert any("7" in e for e in schema_errors(trigger_auth, keda_schemas))


def test_every_overlay_renders_the_same_objects(rendered):
    def inventory(objects):
        # Names from kustomize's generators end in a hash of their content, which differs.
        return sorted(
            (o["kind"], re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"]))
            for o in objects
            if o["kind"] != "Namespace"
        )

    assert inventory(rendered["development"]) == inventory(rendered["production"])


# --- the Procfile's processes ------------------------------------------------------


@pytest.fixture(scope="module")
def processes(procfile) -> dict[str, str]:
    """Every process type a Deployment or the Job runs, with its command line."""
    return dict(procfile)


def runs_line(container: dict, line: str) -> bool:
    """Whether ``container`` runs the Procfile ``line``, its variables taken from its env."""
    try:
        expected = shlex.split(interpolate(line, literal_env(container)))
    except UnsetVariable:
        return False
    return argv(container) == expected


def test_every_procfile_process_runs_as_a_deployment_with_the_same_command(objects, processes):
    deployments = of_kind(objects, "Deployment")
    for process, line in processes.items():
        if process in PROCFILE_ONLY or process == RELEASE:
            continue
        matches = [
            name
            for name, d in deployments.items()
            if runs_line(container(d["spec"]["template"]), line)
        ]
        assert len(matches) == 1, f"{len(matches)} Deployments run the Procfile's {process!r}"
        labels = deployments[matches[0]]["spec"]["template"]["metadata"]["labels"]
        assert process_of(labels) == process, "a Deployment is named for its process"


def test_no_deployment_runs_anything_the_procfile_does_not(objects, processes):
    lines = [line for process, line in processes.items() if process not in PROCFILE_ONLY]
    for name, deployment in of_kind(objects, "Deployment").items():
        runs = [
            line for line in lines if runs_line(container(deployment["spec"]["template"]), line)
        ]
        assert runs, f"Deployment {name} runs {argv(container(deployment['spec']['template']))}"


def test_the_release_job_runs_the_procfile_release_line_and_is_not_retried_forever(
    objects, processes
):
    [job] = of_kind(objects, "Job").values()
    command = argv(container(job["spec"]["template"]))
    assert command[:2] == ["sh", "-c"] and len(command) == 3
    assert shlex.split(command[2]) == shlex.split(processes[RELEASE])
    assert process_of(job["spec"]["template"]["metadata"]["labels"]) == RELEASE
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert 0 < job["spec"]["backoffLimit"] <= 6
    assert job["spec"]["activeDeadlineSeconds"] > 0


def test_the_release_step_applies_what_the_job_needs_and_no_process(objects):
    # The README's order: first every object without a component label and the
    # release Job, then everything but the Job.
    def component(o):
        return o["metadata"].get("labels", {}).get("app.kubernetes.io/component")

    first = [o for o in objects if component(o) in (None, "release")]
    then = [o for o in objects if component(o) != "release"]

    assert {o["kind"] for o in first} >= {"Job", "ConfigMap", "Secret", "NetworkPolicy"}
    assert not [o for o in first if o["kind"] in ("Deployment", "ScaledObject", "Service")]
    [job] = [o for o in first if o["kind"] == "Job"]
    job_pod = job["spec"]["template"]
    names = {(o["kind"], o["metadata"]["name"]) for o in first}
    assert ("ServiceAccount", job_pod["spec"]["serviceAccountName"]) in names
    for entry in container(job_pod).get("env", []):
        if "valueFrom" in entry:
            assert ("Secret", entry["valueFrom"]["secretKeyRef"]["name"]) in names
    assert "Job" not in {o["kind"] for o in then}
    assert {o["kind"] for o in then} >= {"Deployment", "ScaledObject", "Service"}


# --- web apps: Services, probes, autoscaling ---------------------------------------


@pytest.mark.parametrize(("process", "port"), WEB_APPS.items())
def test_web_apps_bind_their_port_and_are_probed_ready_and_alive(objects, process, port):
    pod = deployment_of(objects, process)["spec"]["template"]
    main = container(pod)
    command = argv(main)
    assert command[command.index("--bind") + 1] == f"0.0.0.0:{port}"
    [http] = [p for p in main["ports"] if p["name"] == "http"]
    assert http["containerPort"] == port
    assert main["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}


@pytest.mark.parametrize("process", WEB_APPS)
def test_each_web_app_has_a_service_that_selects_its_pods(objects, process):
    deployment = deployment_of(objects, process)
    [service] = [
        s
        for s in of_kind(objects, "Service").values()
        if selects(s["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    ]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    for other in of_kind(objects, "Deployment").values():
        if other is not deployment:
            labels = other["spec"]["template"]["metadata"]["labels"]
            assert not selects(service["spec"]["selector"], labels)


@pytest.mark.parametrize("process", WEB_APPS)
def test_each_web_app_scales_on_cpu_with_an_autoscaling_v2_hpa(objects, process):
    deployment = deployment_of(objects, process)
    [hpa] = [
        h
        for h in of_kind(objects, "HorizontalPodAutoscaler").values()
        if h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    ]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "cpu" in container(deployment["spec"]["template"])["resources"]["requests"]


def test_every_deployment_selects_its_own_pods_and_no_others(objects):
    deployments = of_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        for other_name, other in deployments.items():
            labels = other["spec"]["template"]["metadata"]["labels"]
            assert selects(deployment["spec"]["selector"], labels) == (name == other_name)


def test_no_autoscaled_deployment_sets_its_own_replica_count(objects):
    # `kubectl apply` would reset whatever the autoscaler chose.
    for name, deployment in of_kind(objects, "Deployment").items():
        assert "replicas" not in deployment["spec"], name


# --- relays, workers and the mailer: metrics, KEDA ----------------------------------


def workers(objects: list[dict]) -> list[str]:
    """Every process that is not a web app: relays, consumers, the mailer, the janitors."""
    return sorted(p for p in pod_templates(objects) if p not in WEB_APPS and p != RELEASE)


def test_every_worker_serves_metrics_and_is_probed_alive_there(objects):
    assert set(workers(objects)) == {*CONSUMERS, *LAGGING, *JANITORS}
    for process in workers(objects):
        main = container(deployment_of(objects, process)["spec"]["template"])
        assert literal_env(main)["METRICS_PORT"] == str(METRICS_PORT), process
        assert {"name": "metrics", "containerPort": METRICS_PORT} in main["ports"], process
        assert main["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}


def scaled_object_of(objects: list[dict], process: str) -> dict:
    """The ScaledObject whose target is ``process``'s Deployment."""
    name = deployment_of(objects, process)["metadata"]["name"]
    [scaled] = [
        s
        for s in of_kind(objects, "ScaledObject").values()
        if s["spec"]["scaleTargetRef"]["name"] == name
    ]
    assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    return scaled


@pytest.mark.parametrize(("process", "queue"), CONSUMERS.items())
def test_each_consumer_scales_on_the_length_of_the_queue_it_reads(objects, process, queue):
    from common import events

    scaled = scaled_object_of(objects, process)
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == getattr(events, queue)
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert float(trigger["metadata"]["value"]) > 0
    assert scaled["spec"]["minReplicaCount"] >= 1, "revocations must not wait for a scale-up"
    auth = of_kind(objects, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    [ref] = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    assert secret_data(of_kind(objects, "Secret")[ref["name"]])[ref["key"]].startswith("amqp")


@pytest.mark.parametrize(("process", "metrics"), LAGGING.items())
def test_relays_and_the_mailer_scale_on_their_lag_from_prometheus(
    objects, externals, process, metrics
):
    scaled = scaled_object_of(objects, process)
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"prometheus"}
    queries = " ".join(t["metadata"]["query"] for t in triggers)
    for metric in metrics:
        assert metric in queries, (process, metric)
    for trigger in triggers:
        assert trigger["metadata"]["serverAddress"] == externals["prometheus"]["serverAddress"]
        assert float(trigger["metadata"]["threshold"]) > 0
    # The process itself reports the lag: at zero replicas nothing would.
    assert scaled["spec"]["minReplicaCount"] >= 1


# --- disruption budgets -----------------------------------------------------------------


def test_every_deployment_has_a_disruption_budget_selecting_exactly_its_pods(objects):
    budgets = of_kind(objects, "PodDisruptionBudget")
    deployments = of_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        [budget] = [b for b in budgets.values() if selects(b["spec"]["selector"], labels)]
        others = [d for d in deployments.values() if d is not deployment]
        for other in others:
            assert not selects(
                budget["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"]
            )
        # A budget of one replica with minAvailable 1 would block every node drain.
        assert budget["spec"].get("maxUnavailable", 0) >= 1, name
    assert len(budgets) == len(deployments)


# --- pods are locked down -----------------------------------------------------------------


@pytest.fixture(scope="module")
def image_uid(root) -> int:
    """The uid of the Dockerfile's unprivileged runtime user."""
    match = re.search(r"useradd\b[^\n]*--uid (\d+)", (root / "Dockerfile").read_text())
    assert match, "the Dockerfile creates no user with --uid"
    return int(match.group(1))


def test_every_pod_runs_as_the_images_unprivileged_user_under_runtime_default_seccomp(
    objects, image_uid
):
    for process, template in pod_templates(objects).items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, process
        assert pod["securityContext"]["runAsUser"] == image_uid, process
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, process
        assert pod["automountServiceAccountToken"] is False, process


def test_every_container_is_non_root_read_only_and_without_privileges(objects, image_uid):
    for process, template in pod_templates(objects).items():
        for box in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            context = box["securityContext"]
            assert context["runAsNonRoot"] is True, process
            assert context["runAsUser"] == image_uid, process
            assert context["allowPrivilegeEscalation"] is False, process
            assert context["readOnlyRootFilesystem"] is True, process
            assert context["capabilities"] == {"drop": ["ALL"]}, process
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, process
            assert context.get("privileged", False) is False, process


def test_every_container_writes_only_to_an_emptydir_tmp(objects):
    for process, template in pod_templates(objects).items():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(template)["volumeMounts"]}
        assert list(mounts) == [POD_TMP], process
        assert "emptyDir" in volumes[mounts[POD_TMP]], process


def test_every_container_has_cpu_and_memory_requests_and_limits(objects):
    for process, template in pod_templates(objects).items():
        resources = container(template)["resources"]
        for bound in ("requests", "limits"):
            assert set(resources[bound]) == {"cpu", "memory"}, (process, bound)


def test_the_namespace_enforces_the_restricted_pod_security_standard(objects):
    [namespace] = of_kind(objects, "Namespace").values()
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        namespace["metadata"]["name"]
    }


# --- secrets ------------------------------------------------------------------------------

_PASSWORD_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def test_the_base_holds_no_secret_value():
    for path in sorted((KUBERNETES / "base").rglob("*")):
        if path.is_dir():
            continue
        text = path.read_text()
        assert "PRIVATE KEY-----" not in text, path
        assert not _PASSWORD_IN_URL.search(text), path
        for document in yaml.safe_load_all(text):
            if isinstance(document, dict):
                assert document.get("kind") != "Secret", path
                assert "secretGenerator" not in document, path


def test_every_secret_variable_comes_from_a_secret_never_a_literal(objects):
    configs = [c["data"] for c in of_kind(objects, "ConfigMap").values()]
    for process, template in pod_templates(objects).items():
        for entry in container(template).get("env", []):
            if entry["name"] in SECRET_VARIABLES:
                assert "secretKeyRef" in entry.get("valueFrom", {}), (process, entry["name"])
    for data in configs:
        assert not set(data) & SECRET_VARIABLES


def test_every_reference_names_a_rendered_secret_or_configmap_key(objects):
    secrets = {name: secret_data(s) for name, s in of_kind(objects, "Secret").items()}
    configs = {name: c["data"] for name, c in of_kind(objects, "ConfigMap").items()}
    for process, template in pod_templates(objects).items():
        main = container(template)
        for source in main.get("envFrom", []):
            assert source["configMapRef"]["name"] in configs, process
        for entry in main.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]], (process, ref)
    for auth in of_kind(objects, "TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]


def test_production_builds_its_secrets_from_the_operators_files_only():
    kustomization = yaml.safe_load(
        (KUBERNETES / "overlays" / "production" / "kustomization.yaml").read_text()
    )
    for generator in kustomization["secretGenerator"]:
        assert "literals" not in generator, generator["name"]
        for source in generator.get("envs", []) + generator.get("files", []):
            path = source.split("=", 1)[-1]
            assert path.startswith("secrets/"), path
            ignored = subprocess.run(
                ["git", "check-ignore", "-q", f"deploy/kubernetes/overlays/production/{path}"],
                cwd=ROOT,
            )
            assert ignored.returncode == 0, f"git would commit the operator's {path}"


def test_production_does_not_build_without_the_operators_secrets(kubectl, tmp_path):
    tree = copy_committed(tmp_path)
    with pytest.raises(KustomizeError, match=r"secrets/auth\.env.*no such file"):
        kustomize(kubectl, tree / "overlays" / "production")


def test_the_production_examples_list_exactly_the_keys_the_manifests_read(rendered):
    objects = rendered["production"]
    secrets_dir = KUBERNETES / "overlays" / "production" / "secrets"
    kustomization = yaml.safe_load((secrets_dir.parent / "kustomization.yaml").read_text())
    for generator in kustomization["secretGenerator"]:
        keys = set()
        for env_file in generator.get("envs", []):
            keys |= {key for key, _ in env_lines(secrets_dir.parent / f"{env_file}.example")}
        keys |= {source.split("=", 1)[0] for source in generator.get("files", [])}
        assert keys == keys_read(objects, generator["name"]), generator["name"]


def keys_read(objects: list[dict], secret: str) -> set[str]:
    """The keys of the Secret ``secret`` (from a secretGenerator) that a container or KEDA reads."""
    name = by_name(objects, "Secret", secret)["metadata"]["name"]
    keys = set()
    for template in pod_templates(objects).values():
        for entry in container(template).get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] == name:
                keys.add(ref["key"])
    for auth in of_kind(objects, "TriggerAuthentication").values():
        keys |= {r["key"] for r in auth["spec"]["secretTargetRef"] if r["name"] == name}
    return keys


# --- every process accepts the environment its pod gets ---------------------------------


def test_every_process_accepts_the_environment_its_pod_gets(objects):
    # A bad value would stop the container at start with a configuration error.
    from auth_app.config import load_settings as auth_settings
    from common.config import Env, database_url
    from user_app.config import load_settings as user_settings
    from workers.mailer import MailerSettings
    from workers.settings import BrokerSettings

    envs = {p: resolved_env(objects, container(t)) for p, t in pod_templates(objects).items()}
    for process in PEPPER_CHECKERS:
        auth_settings(environ=envs[process])
    assert MailerSettings.from_env(Env(envs["mailer"])).smtp.host
    assert "PASSWORD_PEPPER" not in envs["mailer"]
    user = user_settings(environ=envs["user"])
    for process in (*AUTH_SIDE, *USER_SIDE, RELEASE):
        prefix = "AUTH" if process in (*AUTH_SIDE, RELEASE) else "USER"
        url = database_url(Env(envs[process]), prefix, prefix.lower())
        assert url.startswith("postgresql://"), process
    assert database_url(Env(envs[RELEASE]), "USER", "user").startswith("postgresql://")
    for process in ("auth_relay", "auth_worker", "user_relay", "user_worker"):
        assert BrokerSettings.from_env(Env(envs[process])).url.startswith("amqp://"), process
    # Every auth replica signs with the keys in the auth database, and the user
    # service follows them through the auth Service's JWKS.
    auth = auth_settings(environ=envs["auth"])
    assert auth.key_store == "database" and auth.key_sealing_key is not None
    service = of_kind(objects, "Service")["auth"]
    assert [port["port"] for port in service["spec"]["ports"]] == [80]
    assert user.auth_jwks_url == "http://auth/.well-known/jwks.json"


def test_an_unedited_copy_of_the_production_examples_refuses_to_start(kubectl, tmp_path):
    from auth_app.config import load_settings as auth_settings
    from common.config import ConfigError

    tree = copy_committed(tmp_path)
    write_test_secrets(tree / "overlays" / "production", edited=False)
    objects = kustomize(kubectl, tree / "overlays" / "production")
    for process in PEPPER_CHECKERS:
        environ = resolved_env(objects, container(pod_templates(objects)[process]))
        with pytest.raises(ConfigError, match="^PASSWORD_PEPPER must be set"):
            auth_settings(environ=environ)
        assert ".invalid" in environ["AUTH_DATABASE_URL"]
    # The web app signs: with a pepper given, the empty key encryption key stops it too.
    environ = resolved_env(objects, container(pod_templates(objects)["auth"]))
    environ["PASSWORD_PEPPER"] = TEST_SECRET_VALUES["PASSWORD_PEPPER"]
    with pytest.raises(ConfigError, match="^KEY_ENCRYPTION_KEY must be set"):
        auth_settings(environ=environ)


def test_development_runs_on_the_public_development_pepper_only_as_development(rendered):
    from auth_app.config import DEV_PASSWORD_PEPPER
    from auth_app.config import load_settings as auth_settings

    objects = rendered["development"]
    for process in PEPPER_CHECKERS:
        environ = resolved_env(objects, container(pod_templates(objects)[process]))
        assert environ["APP_ENV"] == "development"
        assert auth_settings(environ=environ).password_pepper == DEV_PASSWORD_PEPPER
    production = rendered["production"]
    environ = resolved_env(production, container(pod_templates(production)["auth"]))
    assert environ["APP_ENV"] == "production"


# --- network policies ---------------------------------------------------------------------
#
# A small model of NetworkPolicy semantics (networking.k8s.io/v1): a pod
# selected by a policy of a type is isolated for that direction and allows only
# what one of those policies' rules allows; a connection between two pods needs
# the source's egress and the destination's ingress. Outside addresses are
# matched by ipBlock only (pods by selectors only, as the API documents ipBlock
# for cluster-external addresses).


@dataclass(frozen=True)
class Endpoint:
    """Somewhere a connection goes: an address outside, or a pod."""

    port: int
    protocol: str = "TCP"
    ip: str | None = None
    namespace: str | None = None
    namespace_labels: dict = field(default_factory=dict, hash=False, compare=False)
    pod_labels: dict | None = field(default=None, hash=False, compare=False)
    port_names: dict = field(default_factory=dict, hash=False, compare=False)


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects ``labels``.

    A Service's selector is a plain mapping: it reads as matchLabels.
    """
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def peer_matches(peer: dict, endpoint: Endpoint, policy_namespace: str) -> bool:
    """Whether a NetworkPolicyPeer names ``endpoint``."""
    if "ipBlock" in peer:
        if endpoint.ip is None:
            return False
        address = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if endpoint.pod_labels is None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], endpoint.namespace_labels):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), endpoint.pod_labels)


def port_matches(ports: list[dict] | None, endpoint: Endpoint) -> bool:
    """Whether a rule's ports (none: every port) include the endpoint's."""
    if not ports:
        return True
    for port in ports:
        if port.get("protocol", "TCP") != endpoint.protocol:
            continue
        number = port.get("port")
        if isinstance(number, str):
            number = endpoint.port_names.get(number)
        if number is None or number <= endpoint.port <= port.get("endPort", number):
            return True
    return False


def allowed(policies: list[dict], pod: Endpoint, other: Endpoint, direction: str) -> bool:
    """Whether ``pod``'s policies allow a connection to (egress) or from (ingress) ``other``.

    ``other`` is the destination for egress and the source for ingress (its
    port is then the destination pod's).
    """
    key, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    isolating = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], pod.pod_labels or {})
    ]
    if not isolating:
        return True
    target = other if direction == "Egress" else pod
    for policy in isolating:
        for rule in policy["spec"].get(key, []):
            if peers in rule and not any(
                peer_matches(peer, other, pod.namespace) for peer in rule[peers]
            ):
                continue
            if port_matches(rule.get("ports"), target):
                return True
    return False


def reaches(policies: list[dict], source: Endpoint, destination: Endpoint) -> bool:
    """Whether ``source`` (a pod) can open a connection to ``destination``."""
    if not allowed(policies, source, destination, "Egress"):
        return False
    if destination.pod_labels is None:
        return True
    return allowed(policies, destination, source, "Ingress")


def pods(objects: list[dict]) -> dict[str, Endpoint]:
    """Each process's pods as an endpoint (their first port; ``port_names`` has the rest)."""
    [namespace] = of_kind(objects, "Namespace").values()
    name = namespace["metadata"]["name"]
    namespace_labels = {
        **namespace["metadata"].get("labels", {}),
        "kubernetes.io/metadata.name": name,
    }
    result = {}
    for process, template in pod_templates(objects).items():
        ports = {p["name"]: p["containerPort"] for p in container(template).get("ports", [])}
        result[process] = Endpoint(
            port=next(iter(ports.values()), 0),
            namespace=name,
            namespace_labels=namespace_labels,
            pod_labels=template["metadata"]["labels"],
            port_names=ports,
        )
    return result


def endpoints_of(spec: dict) -> list[Endpoint]:
    """Where an Externals entry (``to`` or ``from``, and ``ports``) says its servers are.

    One endpoint per peer and port: an address inside an ipBlock, or a pod
    that a peer's selectors (matchLabels) select. DNS has no ``ports``: 53.
    """
    ports = spec.get("ports") or [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    found = []
    for peer in spec["to"]:
        for port in ports:
            common = {"port": port["port"], "protocol": port.get("protocol", "TCP")}
            if "ipBlock" in peer:
                network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                address = network.network_address if network.num_addresses == 1 else network[1]
                found.append(Endpoint(ip=str(address), **common))
                continue
            assert set(peer) <= {"namespaceSelector", "podSelector"}, peer
            namespace_labels = peer.get("namespaceSelector", {}).get("matchLabels", {})
            pod_labels = peer.get("podSelector", {}).get("matchLabels", {})
            assert not peer.get("namespaceSelector", {}).get("matchExpressions"), peer
            assert not peer.get("podSelector", {}).get("matchExpressions"), peer
            found.append(
                Endpoint(
                    namespace=namespace_labels.get("kubernetes.io/metadata.name"),
                    namespace_labels=namespace_labels,
                    pod_labels=pod_labels,
                    **common,
                )
            )
    return found


@pytest.fixture(scope="module")
def policies(objects) -> list[dict]:
    """The overlay's NetworkPolicies."""
    return list(of_kind(objects, "NetworkPolicy").values())


def reachers(objects: list[dict], policies: list[dict], spec: dict, test=all) -> set[str]:
    """The processes that reach all (``test=any``: any) of an outside thing's servers and ports."""
    destinations = endpoints_of(spec)
    return {
        process
        for process, pod in pods(objects).items()
        if test(reaches(policies, pod, destination) for destination in destinations)
    }


@pytest.fixture(scope="module")
def reach(objects, policies, externals) -> dict[str, set[str]]:
    """Which processes reach each outside thing the overlay names, and DNS."""
    return {thing: reachers(objects, policies, externals[thing]) for thing in (*REACHES, "dns")}


def test_the_model_isolates_only_selected_pods_and_needs_both_ends(tmp_path):
    pod = Endpoint(port=80, namespace="a", pod_labels={"app": "x"}, port_names={"http": 80})
    other = Endpoint(port=80, namespace="a", pod_labels={"app": "y"}, port_names={"http": 80})
    deny = {
        "metadata": {"namespace": "a"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "x"}},
            "policyTypes": ["Ingress", "Egress"],
        },
    }
    allow_out = {
        "metadata": {"namespace": "a"},
        "spec": {
            "podSelector": {
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]
            },
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "http"}]}],
        },
    }
    outside = Endpoint(port=5432, ip="10.0.0.5")
    block = {
        "metadata": {"namespace": "a"},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.5/32"]}}]}],
        },
    }

    assert reaches([], pod, other)
    assert not reaches([deny], pod, other)
    assert reaches([deny, allow_out], pod, other)
    assert not reaches([deny, allow_out], other, pod)  # x refuses ingress
    assert not reaches([block], other, outside)
    assert reaches([block], other, Endpoint(port=5432, ip="10.0.0.6"))
    assert not reaches([block], other, Endpoint(port=5432, ip="10.0.1.6"))


def test_no_process_reaches_an_address_nobody_named(objects, policies):
    nowhere = Endpoint(port=443, ip="203.0.113.7")
    for process, pod in pods(objects).items():
        assert not reaches(policies, pod, nowhere), process


def test_a_pod_elsewhere_reaches_only_the_web_apps_http_ports(objects, policies):
    stranger = Endpoint(port=40000, namespace="elsewhere", pod_labels={"app": "stranger"})
    for process, pod in pods(objects).items():
        for name, port in pod.port_names.items():
            entry = allowed(policies, replace(pod, port=port), stranger, "Ingress")
            assert entry == (process in WEB_APPS and name == "http"), (process, name)


@pytest.mark.parametrize("thing", sorted(REACHES))
def test_each_outside_server_is_reached_by_exactly_the_processes_that_use_it(reach, thing):
    assert reach[thing] == REACHES[thing]


@pytest.mark.parametrize("thing", [*sorted(REACHES), "dns"])
def test_a_process_reaches_all_of_an_outside_things_servers_and_ports_or_none(
    objects, policies, externals, thing
):
    spec = externals[thing]
    assert reachers(objects, policies, spec, any) == reachers(objects, policies, spec, all)


def test_the_user_side_cannot_reach_the_auth_database_or_redis(reach):
    for process in USER_SIDE:
        assert process not in reach["authDatabase"], process
        assert process not in reach["redis"], process


def test_the_auth_side_cannot_reach_the_user_database(reach):
    for process in AUTH_SIDE:
        assert process not in reach["userDatabase"], process


def test_rabbitmq_is_reachable_by_every_relay_and_worker_and_no_web_app(reach):
    assert {"auth_relay", "user_relay", "auth_worker", "user_worker"} <= reach["rabbitmq"]
    assert not set(WEB_APPS) & reach["rabbitmq"]


def test_only_the_mailer_reaches_smtp_on_the_smtp_ports(reach, externals, overlay):
    assert reach["smtp"] == {"mailer"}
    if overlay == "production":
        assert {p["port"] for p in externals["smtp"]["ports"]} == {587, 465, 25}


def test_every_process_resolves_names(reach, objects):
    assert reach["dns"] == set(pod_templates(objects))


# The one connection between processes: the user app fetches the auth app's JWKS.
BETWEEN_PROCESSES = {("user", "auth", WEB_APPS["auth"])}


def test_no_process_reaches_another_but_the_user_app_the_auth_apps_jwks(objects, policies):
    everyone = pods(objects)
    for source, pod in everyone.items():
        for target, other in everyone.items():
            for port in other.port_names.values():
                if source != target:
                    destination = replace(other, port=port)
                    expected = (source, target, port) in BETWEEN_PROCESSES
                    assert reaches(policies, pod, destination) == expected, (source, target, port)


def test_clients_reach_the_web_apps_and_only_prometheus_the_metrics_ports(
    objects, policies, externals
):
    client = Endpoint(port=40000, ip="198.51.100.20")
    scrapers = endpoints_of({"to": externals["prometheus"]["from"], "ports": [{"port": 40000}]})
    for process, pod in pods(objects).items():
        if process in WEB_APPS:
            assert allowed(policies, pod, client, "Ingress"), process
        elif process == RELEASE:
            assert not allowed(policies, pod, client, "Ingress")
        else:
            metrics = replace(pod, port=METRICS_PORT)
            assert not allowed(policies, metrics, client, "Ingress"), process
            for scraper in scrapers:
                assert allowed(policies, metrics, scraper, "Ingress"), process
