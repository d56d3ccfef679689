"""The cluster configs in infra/ against Ray's schema, the pipeline and their README.

Nothing here starts a cluster: the AWS config goes through the installed Ray's JSON schema and
the offline part of `ray up` (defaults filled in, then validated), and the RayJob through the
fields KubeRay's ray.io/v1 API defines. The rest checks that the configs agree with each other,
with dvc.yaml / params.yaml / pyproject.toml, and with what infra/README.md tells users to type.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
RAY_VERSION = importlib.metadata.version("ray")

# Field names of KubeRay's ray.io/v1 types (apis/ray/v1/rayjob_types.go, raycluster_types.go).
# Kubernetes drops unknown fields of a custom resource with at most a warning, so a misspelt
# `shutdownAfterJobFinishes` would silently leave the GPU cluster running.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
    "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule",
}
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend",
}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy",
}
GPU_INSTANCE_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")

SECRET_PATTERNS = [
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),  # an access key id
    re.compile(r"aws_secret_access_key\s*[:=]\s*[\"']?[A-Za-z0-9/+]{40}", re.IGNORECASE),
]


# ---------------------------------------------------------------------------------------------
# Loading

def aws_config() -> dict:
    return yaml.safe_load((INFRA / "aws-cluster.yaml").read_text())


def rayjob_documents() -> list[dict]:
    return list(yaml.safe_load_all((INFRA / "kuberay-rayjob.yaml").read_text()))


def rayjob() -> dict:
    jobs = [doc for doc in rayjob_documents() if doc["kind"] == "RayJob"]
    assert len(jobs) == 1, f"expected one RayJob in kuberay-rayjob.yaml, found {len(jobs)}"
    return jobs[0]


def readme() -> str:
    return (INFRA / "README.md").read_text()


def dockerfile() -> str:
    return (INFRA / "Dockerfile").read_text()


def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def aws_project_dir() -> str:
    """Where the cluster keeps the project: the remote side of the pyproject.toml mount."""
    mounts = {local.removeprefix("./"): remote for remote, local in aws_config()["file_mounts"].items()}
    assert "pyproject.toml" in mounts, "aws-cluster.yaml must sync pyproject.toml (pip install -e needs it)"
    return str(Path(mounts["pyproject.toml"]).parent)


def image_project_dir() -> str:
    """Where the image keeps the project: the destination of the Dockerfile's COPY of the context."""
    found = re.search(r"^COPY\s+(?:--\S+\s+)*\.\s+(\S+)\s*$", dockerfile(), re.MULTILINE)
    assert found, "infra/Dockerfile must COPY the build context (the repository) into the image"
    assert re.search(rf"^WORKDIR\s+{re.escape(found.group(1))}\s*$", dockerfile(), re.MULTILINE)
    return found.group(1).rstrip("/")


def pod_specs() -> dict[str, dict]:
    """The pod spec of the head group and of each worker group, by group name."""
    cluster = rayjob()["spec"]["rayClusterSpec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    specs.update({group["groupName"]: group["template"]["spec"] for group in cluster["workerGroupSpecs"]})
    return specs


def ray_container(pod_spec: dict) -> dict:
    return pod_spec["containers"][0]  # KubeRay runs Ray in the first container


def produced_paths() -> set[str]:
    """Every path a dvc.yaml stage writes (outs, metrics, plots), with ${...} left as is."""
    produced = set()
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                produced.update(entry if isinstance(entry, dict) else [entry])
    return produced


def shared_directories_needed() -> set[str]:
    """Top-level directories Ray workers on other nodes may read or write: those of the stage
    outputs (but the code manifests, which only `dvc repro` on the head node reads), and that of
    a local ray.storage_path."""
    needed = {path.split("/")[0] for path in produced_paths()} - {"code"}
    storage = params()["ray"]["storage_path"]
    if "://" not in storage:
        needed.add(Path(storage).parts[0])
    return needed


def documented_image() -> str:
    found = re.findall(r"docker build -f infra/Dockerfile -t (\S+) \.", readme())
    assert len(set(found)) == 1, f"infra/README.md should name one image to build, found {found}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# Both configs

def test_every_infra_yaml_parses_into_mappings():
    files = sorted(INFRA.glob("*.yaml"))
    assert {path.name for path in files} >= {"aws-cluster.yaml", "kuberay-rayjob.yaml"}
    for path in files:
        documents = list(yaml.safe_load_all(path.read_text()))
        assert documents and all(isinstance(doc, dict) for doc in documents), path.name


def test_no_literal_aws_keys_anywhere_in_infra():
    # The patterns catch what they are for, and not the README's "$AWS_SECRET_ACCESS_KEY".
    fake_id, fake_secret = "AKIA" + "Q" * 16, "aws_secret_access_key = " + "x/Y+" * 10
    assert all(any(p.search(text) for p in SECRET_PATTERNS) for text in (fake_id, fake_secret))
    assert not any(p.search('AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"') for p in SECRET_PATTERNS)
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(REPO)} holds a literal AWS credential"


# ---------------------------------------------------------------------------------------------
# AWS cluster launcher config

def test_cluster_config_validates_against_rays_installed_schema():
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(aws_config())]
    assert errors == []
    # The schema is strict enough to catch a misspelt key or a fractional GPU count.
    misspelt = aws_config()
    misspelt["setup_command"] = misspelt.pop("setup_commands")
    fractional = aws_config()
    fractional["available_node_types"]["worker.gpu"]["resources"]["GPU"] = 0.5
    assert not validator.is_valid(misspelt) and not validator.is_valid(fractional)


def test_cluster_config_passes_the_offline_checks_of_ray_up():
    # What `ray up` does before it talks to AWS: fill in the provider's defaults, then validate
    # (head type among the node types, min_workers within max_workers, ...).
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(aws_config()))
    validate_config(prepared)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_head_is_cpu_only_and_workers_are_gpu_nodes_large_enough_for_a_run():
    config, ray_params = aws_config(), params()["ray"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] >= 1
    workers = {name: spec for name, spec in types.items() if name != config["head_node_type"]}
    assert workers
    for name, spec in workers.items():
        instance = spec["node_config"]["InstanceType"]
        assert instance.startswith(GPU_INSTANCE_FAMILIES), f"{name}: {instance} is not a GPU instance"
        assert spec["resources"]["GPU"] >= 1 and spec["resources"]["CPU"] >= ray_params["cpus_per_worker"]
        # So that use_gpu: auto finds a GPU when the sweep starts.
        assert spec["min_workers"] >= 1
    # One training run needs num_workers GPUs at once, or Ray Train waits forever.
    most_gpus = sum(min(s["max_workers"], config["max_workers"]) * s["resources"]["GPU"] for s in workers.values())
    assert most_gpus >= ray_params["num_workers"]
    for name, spec in types.items():
        # Without an ImageId Ray falls back to an old Ubuntu 18.04 Deep Learning AMI.
        assert "ImageId" in spec["node_config"], name
        assert spec["node_config"]["InstanceType"] in readme(), f"README does not mention {name}'s instance"


def test_setup_installs_the_synced_project_with_the_local_ray_and_python():
    commands = aws_config()["setup_commands"]
    project = aws_project_dir()
    installs = [c for c in commands if "pip install" in c and re.search(rf"-e {re.escape(project)}(\s|$)", c)]
    assert len(installs) == 1, f"no setup command installs {project} editable: {commands}"
    # The cluster's Ray must be the one that runs `ray up` here.
    assert f'"ray[default]=={RAY_VERSION}"' in installs[0]
    python = re.search(r"venv --python (\d+\.\d+)", " ".join(commands))
    assert python, "setup_commands should make a venv with a pinned Python"
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(f"{python.group(1)}.0")


def test_file_mounts_carry_every_input_of_the_pipeline_and_no_output():
    config, project = aws_config(), aws_project_dir()
    mounted = {}
    for remote, local in config["file_mounts"].items():
        local = local.removeprefix("./")
        assert (REPO / local).exists(), f"file mount source {local} does not exist"
        assert remote == f"{project}/{local}", f"{local} should keep its place under {project}"
        mounted[local] = remote
    produced = produced_paths()

    def covered(path: str) -> bool:
        return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounted)

    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        for dep in stage.get("deps", []):
            if not any(dep == p or dep.startswith(p + "/") for p in produced):
                assert covered(dep), f"dvc.yaml input {dep} is not synced to the cluster"
        for entry in stage.get("params", []):
            for file in entry if isinstance(entry, dict) else []:  # params files besides params.yaml
                folder = file.split("/")[0]
                assert covered(folder), f"dvc.yaml params file {file} is not synced to the cluster"
    for needed in ("dvc.yaml", "params.yaml", "pyproject.toml", pyproject()["project"]["readme"], ".dvc/config"):
        assert covered(needed), f"{needed} is not synced to the cluster"
    # Outputs live on the shared file system: a sync must never overwrite them.
    for shared in shared_directories_needed():
        assert not any(m == shared or m.startswith(shared + "/") for m in mounted), shared


def test_aws_shared_directories_cover_what_stages_write():
    commands = " ".join(aws_config()["setup_commands"])
    loop = re.search(r"for d in ([\w ]+); do", commands)
    assert loop, "setup_commands should bind-mount the shared directories in a `for d in ...` loop"
    assert set(loop.group(1).split()) >= shared_directories_needed()
    assert f"mount --bind /mnt/efs/csada/$d {aws_project_dir()}/$d" in commands


def test_aws_placeholders_are_documented_and_regions_agree():
    config, text = aws_config(), (INFRA / "aws-cluster.yaml").read_text()
    region = config["provider"]["region"]
    assert config["provider"]["availability_zone"].startswith(region)
    efs_regions = set(re.findall(r"\.efs\.([a-z0-9-]+)\.amazonaws\.com", text))
    assert efs_regions == {region}, f"the EFS host must be in {region}: {efs_regions}"
    values = [t["node_config"]["ImageId"] for t in config["available_node_types"].values()]
    placeholders = set(re.findall(r"[\w-]*REPLACE_ME", " ".join(values + config["setup_commands"])))
    assert placeholders == {"ami-REPLACE_ME", "fs-REPLACE_ME"}
    # Each is explained in the README: the AMI with the SSM parameter that names it.
    doc = readme()
    assert "`ImageId`" in doc and "fs-REPLACE_ME" in doc
    assert "/aws/service/deeplearning/ami/x86_64/" in doc


def test_readme_runs_the_sweep_where_the_cluster_keeps_the_project():
    project, doc = aws_project_dir(), readme()
    assert f"ray job submit --address http://127.0.0.1:8265 -- dvc --cd {project} repro" in doc
    assert f"cd {project} && RAY_ADDRESS=auto dvc repro" in doc


# ---------------------------------------------------------------------------------------------
# KubeRay RayJob and its image

def test_rayjob_uses_only_fields_kuberay_defines_and_shuts_down():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC_FIELDS, set(cluster) - RAYCLUSTER_SPEC_FIELDS
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP_FIELDS
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS


def test_rayjob_entrypoint_reproduces_and_pushes_in_the_image_project():
    entrypoint = rayjob()["spec"]["entrypoint"]
    # KubeRay pastes the entrypoint unquoted into the submitter's shell line: an operator would
    # run part of it in the submitter pod instead of on the Ray cluster.
    assert not re.search(r"[;&|<>`]|\$\(", entrypoint)
    assert shlex.split(entrypoint) == ["python", "-m", "pipeline.cluster.remote", "repro", "--repo", image_project_dir()]
    assert f"`{entrypoint}`" in " ".join(readme().split())


def test_the_cluster_job_pushes_after_repro_and_says_when_there_is_no_remote(tmp_path, monkeypatch, capsys):
    import subprocess

    from pipeline.cluster import remote

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(args[3:]) or subprocess.CompletedProcess(args, 0))
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("")
    assert remote.main(["repro", "--repo", str(tmp_path)]) == 0
    assert calls == [["repro"]] and "no default DVC remote" in capsys.readouterr().err
    (tmp_path / ".dvc" / "config").write_text("[core]\n    remote = storage\n['remote \"storage\"']\n    url = s3://b/p\n")
    calls.clear()
    assert remote.main(["repro", "--repo", str(tmp_path)]) == 0
    assert calls == [["repro"], ["push"]]


def test_rayjob_ray_version_matches_the_image_and_the_installed_ray():
    ray_version = rayjob()["spec"]["rayClusterSpec"]["rayVersion"]
    major, minor = RAY_VERSION.split(".")[:2]
    assert ray_version.startswith(f"{major}.{minor}.")
    base = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu\s*$", dockerfile(), re.MULTILINE)
    assert base, "infra/Dockerfile should start FROM a rayproject/ray:<version>-py<xy>-gpu image"
    assert base.group(1) == ray_version
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(f"{base.group(2)}.{base.group(3)}.0")
    assert re.search(r"^RUN pip install .*-e \.", dockerfile(), re.MULTILINE)


def test_every_rayjob_container_runs_the_image_the_readme_builds():
    image = documented_image()
    assert f"docker build -f infra/Dockerfile -t {image} ." in dockerfile()
    for group, pod in pod_specs().items():
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["image"] == image, f"{group}/{container['name']}"


def test_rayjob_head_is_cpu_only_and_gpu_workers_fit_a_run():
    ray_params = params()["ray"]
    pods = pod_specs()
    head_limits = ray_container(pods.pop("head"))["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits
    groups = {g["groupName"]: g for g in rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    gpus = 0
    for name, pod in pods.items():
        resources = ray_container(pod)["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        assert float(resources["limits"]["cpu"]) >= ray_params["cpus_per_worker"]
        group = groups[name]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        gpus += group["maxReplicas"] * int(resources["limits"]["nvidia.com/gpu"])
    assert gpus >= ray_params["num_workers"]


def test_rayjob_pods_share_the_directories_stages_write_at_the_project_paths():
    project = image_project_dir()
    claims = {d["metadata"]["name"]: d for d in rayjob_documents() if d["kind"] == "PersistentVolumeClaim"}
    needed = shared_directories_needed()
    for group, pod in pod_specs().items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        shared = [m for m in ray_container(pod)["volumeMounts"] if "subPath" in m]
        assert {m["subPath"] for m in shared} >= needed, group
        for mount in shared:
            assert mount["mountPath"] == f"{project}/{mount['subPath']}"
            claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
            assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"]
    # The head's init container makes them writable for the image's user first.
    init = " ".join(pod_specs()["head"]["initContainers"][0]["command"])
    assert all(directory in init.split() for directory in needed)


def test_rayjob_credentials_come_only_from_kubernetes_secrets():
    for group, pod in pod_specs().items():
        for container in pod.get("initContainers", []) + pod["containers"]:
            for variable in container.get("env", []):
                assert "value" not in variable or not variable["name"].startswith("AWS_"), variable
            for source in container.get("envFrom", []):
                assert set(source) == {"secretRef"}, f"{group}: credentials only via secretRef"
        assert ray_container(pod)["envFrom"], f"{group} gets no S3 credentials"
