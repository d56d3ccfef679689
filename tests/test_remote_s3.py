"""DVC remotes and Ray run storage on S3, against moto's S3 server on 127.0.0.1.

The server checks signatures (moto's IAM authentication is switched on once the bucket and a
user exist), so wrong keys are refused as AWS refuses them and anonymous access fails. Its keys
are moto's fakes (the server and the sandbox: tests/s3server.py). Every test runs with the
machine's AWS settings hidden: empty shared credential/config files, no AWS_* variables, no
instance metadata.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cluster.remote import (
    BucketNotFoundError,
    RemoteConfigError,
    RemoteCredentialsError,
    RemoteStatus,
    check_remote,
    configure_remote,
    ray_storage_uri,
    ray_worker_env,
)
from tests.conftest import VENV_BIN, run
from tests.s3server import BUCKET, REGION, aws_sandbox, s3  # noqa: F401 (fixtures)


def _use_keys(monkeypatch, key_id: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)


def _hand_written_repo(root: Path, url: str, endpoint: str, local: str = "", committed: str = "") -> Path:
    """A directory whose .dvc/config names remote 'storage', as `dvc remote add -d` writes it."""
    (root / ".dvc").mkdir(parents=True)
    (root / ".dvc/config").write_text(
        f"[core]\n    remote = storage\n['remote \"storage\"']\n    url = {url}\n    endpointurl = {endpoint}\n{committed}"
    )
    if local:
        (root / ".dvc/config.local").write_text(f"['remote \"storage\"']\n{local}")
    return root


# --- Ray storage URIs ---------------------------------------------------------------------------


def test_ray_storage_uri_puts_the_endpoint_in_pyarrows_query():
    assert ray_storage_uri("s3://bucket/ray") == "s3://bucket/ray"
    assert ray_storage_uri("s3://bucket/ray/", "http://127.0.0.1:9000") == (
        "s3://bucket/ray?endpoint_override=127.0.0.1:9000&scheme=http"
    )
    assert ray_storage_uri("s3://bucket", "https://minio.example:9000/", region="eu-west-1") == (
        "s3://bucket?endpoint_override=minio.example:9000&scheme=https&region=eu-west-1"
    )


@pytest.mark.parametrize(
    ("url", "endpoint", "says"),
    [
        ("gs://bucket/x", None, "not an S3 URL"),
        ("s3://Bucket_1/x", None, "not a valid S3 bucket name"),
        ("s3://bucket/x?endpoint_override=a", None, "query"),
        ("s3://AKIAIOSFODNN7EXAMPLE:s3cr3t@bucket/x", None, "credentials"),
        ("s3://bucket/x", "127.0.0.1:9000", "http://host[:port]"),
        ("s3://bucket/x", "http://user:s3cr3t@127.0.0.1:9000", "credentials"),
        ("s3://bucket/x", "http://127.0.0.1:9000/bucket", "path"),
        ("s3://bucket/x", "http://minio:notaport", "no valid host and port"),
        ("s3://bucket/x", "http://minio:0", "a port from 1 to 65535"),
        ("s3://bucket/x", "http://:9000", "no valid host and port"),
    ],
)
def test_bad_urls_are_refused_without_echoing_secrets(url, endpoint, says):
    with pytest.raises(RemoteConfigError, match=says.replace("[", r"\[").replace("]", r"\]")) as error:
        ray_storage_uri(url, endpoint)
    assert "s3cr3t" not in str(error.value)


def test_pyarrow_reads_the_storage_uri_as_the_bucket_on_the_endpoint(s3, monkeypatch):
    import pyarrow.fs

    _use_keys(monkeypatch, s3.key_id, s3.secret)
    filesystem, path = pyarrow.fs.FileSystem.from_uri(ray_storage_uri(f"s3://{BUCKET}/probe", s3.endpoint))
    assert path == f"{BUCKET}/probe"
    with filesystem.open_output_stream(f"{path}/hello.txt") as stream:
        stream.write(b"hello")
    assert s3.client().get_object(Bucket=BUCKET, Key="probe/hello.txt")["Body"].read() == b"hello"


def test_ray_worker_env_forwards_only_the_aws_chain(monkeypatch):
    environ = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_PROFILE": "",
               "HOME": "/root", "AWS_DEFAULT_REGION": REGION}
    assert ray_worker_env(environ) == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret",
                                       "AWS_DEFAULT_REGION": REGION}


# --- configure_remote refusals (before DVC runs) -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options", "says"),
    [
        ("s3://bucket/x", {"secret_access_key": "s3cr3t"}, "--local storage secret_access_key"),
        ("s3://bucket/x", {"access_key_id": "AKIAIOSFODNN7EXAMPLE"}, "access_key_id"),
        ("s3://bucket/x", {"profile": "AKIAIOSFODNN7EXAMPLE"}, "access key id"),
        ("s3://bucket/AKIAIOSFODNN7EXAMPLE", {}, "access key id"),
        ("s3://AKIAIOSFODNN7EXAMPLE:s3cr3t@bucket", {}, "credentials"),
    ],
)
def test_configure_refuses_secrets_and_writes_nothing(tmp_path, url, options, says):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text("")
    with pytest.raises(RemoteConfigError, match=says) as error:
        configure_remote(tmp_path, "storage", url, options=options)
    assert "s3cr3t" not in str(error.value)
    assert (tmp_path / ".dvc/config").read_text() == ""


def test_configure_needs_a_dvc_repository_and_a_valid_name(tmp_path):
    with pytest.raises(RemoteConfigError, match="not a DVC repository"):
        configure_remote(tmp_path, "storage", "s3://bucket/x")
    with pytest.raises(RemoteConfigError, match="remote name 'My Remote'"):
        configure_remote(tmp_path, "My Remote", "s3://bucket/x")


# --- check_remote --------------------------------------------------------------------------------


def test_check_remote_answers_with_the_credentials_source(s3, tmp_path, monkeypatch):
    repo = _hand_written_repo(tmp_path, f"s3://{BUCKET}/dvc", s3.endpoint)
    _use_keys(monkeypatch, s3.key_id, s3.secret)
    assert check_remote(repo) == RemoteStatus("storage", f"s3://{BUCKET}/dvc", s3.endpoint, None, "env")


def test_keys_in_the_local_config_are_used(s3, tmp_path):
    local = f"    access_key_id = {s3.key_id}\n    secret_access_key = {s3.secret}\n"
    repo = _hand_written_repo(tmp_path, f"s3://{BUCKET}/dvc", s3.endpoint, local=local)
    assert check_remote(repo, "storage").credential_source == "explicit"


def test_keys_in_the_committed_config_are_refused(s3, tmp_path):
    committed = f"    access_key_id = {s3.key_id}\n    secret_access_key = {s3.secret}\n"
    repo = _hand_written_repo(tmp_path, f"s3://{BUCKET}/dvc", s3.endpoint, committed=committed)
    with pytest.raises(RemoteConfigError, match="access_key_id, secret_access_key in .dvc/config") as error:
        check_remote(repo)
    assert s3.secret not in str(error.value) and s3.key_id not in str(error.value)


def _assert_names_the_remote_and_the_fix(error: Exception, *secrets: str) -> None:
    message = str(error)
    for part in ("remote 'storage'", f"s3://{BUCKET}/dvc", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_PROFILE", "dvc remote modify --local storage profile"):
        assert part in message
    for secret in secrets:
        assert secret not in message


@pytest.mark.parametrize("wrong", ["secret", "key_id"])
def test_wrong_credentials_are_named_as_such(s3, tmp_path, monkeypatch, wrong):
    repo = _hand_written_repo(tmp_path, f"s3://{BUCKET}/dvc", s3.endpoint)
    key_id, secret = (s3.key_id, "WrongSecretWrongSecret") if wrong == "secret" else ("AKIAXXXXXXXXXXXXXXXX", s3.secret)
    _use_keys(monkeypatch, key_id, secret)
    with pytest.raises(RemoteCredentialsError, match="S3 refused the credentials from env") as error:
        check_remote(repo)
    _assert_names_the_remote_and_the_fix(error.value, secret, s3.secret)


def test_missing_credentials_are_named_as_such(s3, tmp_path):
    repo = _hand_written_repo(tmp_path, f"s3://{BUCKET}/dvc", s3.endpoint)
    with pytest.raises(RemoteCredentialsError, match="no AWS credentials found") as error:
        check_remote(repo)
    _assert_names_the_remote_and_the_fix(error.value)


def test_an_unknown_profile_is_a_credentials_error(s3, tmp_path, monkeypatch):
    repo = _hand_written_repo(tmp_path, f"s3://{BUCKET}/dvc", s3.endpoint)
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(RemoteCredentialsError, match="profile"):
        check_remote(repo)


def test_a_missing_bucket_and_an_unknown_remote_are_clear(s3, tmp_path, monkeypatch):
    repo = _hand_written_repo(tmp_path, "s3://no-such-bucket/dvc", s3.endpoint)
    _use_keys(monkeypatch, s3.key_id, s3.secret)
    with pytest.raises(BucketNotFoundError, match="bucket 'no-such-bucket' does not exist"):
        check_remote(repo)
    with pytest.raises(RemoteConfigError, match="unknown remote 'backup'; known: storage"):
        check_remote(repo, "backup")


# --- DVC end to end ------------------------------------------------------------------------------

STAGE = """\
import pathlib, yaml
scale = yaml.safe_load(open("params.yaml"))["scale"]
values = [int(line) * scale for line in open("data/raw.txt")]
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/scaled.txt").write_text("".join(f"{value}\\n" for value in values))
"""

DVC_YAML = """\
stages:
  scale:
    cmd: python scale.py
    deps: [scale.py, data/raw.txt]
    params: [scale]
    outs: [out/scaled.txt]
"""


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "dvc"), *args], repo, dict(os.environ), timeout=120)


@pytest.fixture(scope="module")
def dvc_repo(s3, tmp_path_factory) -> Path:
    """A git + DVC repository: one tracked file, a one-stage pipeline, remote 'storage' on moto."""
    repo = tmp_path_factory.mktemp("dvc") / "repo"
    (repo / "data").mkdir(parents=True)
    run(["git", "init", "-q", "-b", "main"], repo, dict(os.environ))
    _dvc(repo, "init", "-q")
    (repo / "data/raw.txt").write_text("3\n1\n2\n")
    (repo / "params.yaml").write_text("scale: 10\n")
    (repo / "scale.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    _dvc(repo, "add", "-q", "data/raw.txt")
    configure_remote(repo, "storage", f"s3://{BUCKET}/dvc", endpoint_url=s3.endpoint, region=REGION)
    return repo


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_push_then_pull_into_an_empty_workspace_restores_everything(s3, dvc_repo, monkeypatch):
    repo = dvc_repo
    _use_keys(monkeypatch, s3.key_id, s3.secret)
    outputs = [_dvc(repo, "repro"), _dvc(repo, "push")]
    tracked = [repo / "data/raw.txt", repo / "out/scaled.txt"]
    before = {path: path.read_bytes() for path in tracked}
    assert before[repo / "out/scaled.txt"] == b"30\n10\n20\n"
    assert len(s3.keys("dvc/files/md5/")) == 2

    shutil.rmtree(repo / ".dvc/cache")
    shutil.rmtree(repo / "out")
    (repo / "data/raw.txt").unlink()
    outputs.append(_dvc(repo, "pull"))
    assert {path: path.read_bytes() for path in tracked} == before
    outputs += [_dvc(repo, "status"), _dvc(repo, "status", "--cloud"), _dvc(repo, "repro")]
    assert "Data and pipelines are up to date" in outputs[-3].stdout
    assert "in sync" in outputs[-2].stdout
    assert "didn't change, skipping" in outputs[-1].stdout and "Running stage" not in outputs[-1].stdout

    cli = run([sys.executable, "-m", "pipeline.cluster.remote", "check", "--repo", str(repo)], repo,
              dict(os.environ))
    assert "remote 'storage'" in cli.stdout and "credentials from env" in cli.stdout
    config = (repo / ".dvc/config").read_text()
    assert f"endpointurl = {s3.endpoint}" in config and f"url = s3://{BUCKET}/dvc" in config
    assert not (repo / ".dvc/config.local").exists()
    written = [repo / name for name in (".dvc/config", "dvc.yaml", "dvc.lock", "params.yaml", "data/raw.txt.dvc")]
    said = [result.stdout + result.stderr for result in [*outputs, cli]]
    for text in [path.read_text() for path in written] + said:
        assert s3.secret not in text and s3.key_id not in text


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_push_without_credentials_fails_and_check_says_why(s3, dvc_repo):
    (dvc_repo / "data/extra.txt").write_text("never pushed\n")
    _dvc(dvc_repo, "add", "-q", "data/extra.txt")
    env = dict(os.environ)
    push = subprocess.run([str(VENV_BIN / "dvc"), "push"], cwd=dvc_repo, env=env, capture_output=True, text=True,
                          timeout=120)
    assert push.returncode != 0 and "Unable to locate credentials" in push.stderr
    check = subprocess.run([sys.executable, "-m", "pipeline.cluster.remote", "check"], cwd=dvc_repo, env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 1
    assert "error: remote 'storage'" in check.stderr and "no AWS credentials found" in check.stderr


# --- Ray Train run storage -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_training_runs_keep_their_state_in_s3_and_a_finished_one_is_reused(s3, ray_cluster, monkeypatch, tmp_path):
    import dataclasses

    import ray

    from pipeline.cluster.distributed import run_jobs
    from pipeline.config import RayConfig
    from pipeline.runs.checkpoints import load_checkpoint
    from pipeline.runs.jobs import TrainJob, run_name
    from pipeline.runs.optim import OptimConfig
    from tests.conftest import prepare_toy

    _use_keys(monkeypatch, s3.key_id, s3.secret)
    job = TrainJob(name="toy-s3", dataset="toy", **prepare_toy(tmp_path), model="mlp", model_options={},
                   pretrained=False, method="ap", method_options={"alpha": 1.0},
                   optim=dataclasses.asdict(OptimConfig(epochs=2, optimizer="adam", lr=0.01, batch_size=32)),
                   seed=0, select_metric="val_wer")
    ray_config = RayConfig(address=ray_cluster, num_workers=1, use_gpu=False,
                           storage_path=ray_storage_uri(f"s3://{BUCKET}/runs", s3.endpoint))
    # The cluster's workers were started without these credentials: the job's runtime
    # environment is what carries them to the trials.
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=ray_cluster, runtime_env={"env_vars": ray_worker_env()})
    try:
        [store] = run_jobs([job], ray_config, tmp_path, experiment="s3")
    finally:
        ray.shutdown()
    prefix = f"runs/{run_name(job)}/"
    assert {f"{prefix}checkpoint.pt", f"{prefix}outcome/model.pt", f"{prefix}outcome/history.json"} <= set(s3.keys(prefix))
    # A second stage run finds the finished run in the bucket and trains nothing (no Ray at all).
    [again] = run_jobs([job], ray_config, tmp_path, experiment="s3")
    assert again.finished() and not ray.is_initialized()
    again.copy_outcome(tmp_path / "out")
    assert load_checkpoint(tmp_path / "out" / "model.pt")["job"] == job.to_dict()


def test_a_checkpoint_in_s3_resumes_only_when_its_checksum_verifies(s3, monkeypatch, capsys):
    import torch

    from pipeline.cluster.distributed import _check_state
    from pipeline.runs.checkpoints import CHECKPOINT_FILE, CHECKSUM_FILE, RunStore
    from pipeline.runs.jobs import TrainJob, run_name
    from tests.fakes import flip_bit_in_tensor

    _use_keys(monkeypatch, s3.key_id, s3.secret)
    job = TrainJob(name="toy-sums", dataset="toy", raw_dir="raw", manifest="m.parquet", cost_csv=None, model="mlp",
                   model_options={}, pretrained=False, method="erm", method_options={}, optim={}, seed=0,
                   select_metric="val_loss")
    prefix = f"sums/{run_name(job)}/"
    location = ray_storage_uri(f"s3://{BUCKET}/sums/{run_name(job)}", s3.endpoint)
    weight = torch.tensor([0.25, -1.5, 12345.678, 3.0])
    client = s3.client()

    def files() -> list[str]:  # pyarrow marks the folder with an empty "<prefix>/" object
        return [key for key in s3.keys(prefix) if not key.endswith("/")]

    def stage_check() -> str:
        _check_state(job, RunStore(location), "s3", clean=False)
        return "".join(capsys.readouterr().out.split())  # the console wraps a long line anywhere

    RunStore(location).save_state({"model": {"w": weight}, "epoch": 0, "job": job.to_dict()})
    assert files() == [f"{prefix}{CHECKPOINT_FILE}", f"{prefix}{CHECKSUM_FILE}"]
    assert stage_check() == "" and torch.equal(RunStore(location).load_state()["model"]["w"], weight)  # intact: resumed
    saved = client.get_object(Bucket=BUCKET, Key=f"{prefix}{CHECKPOINT_FILE}")["Body"].read()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}{CHECKPOINT_FILE}", Body=flip_bit_in_tensor(saved, weight, 2))
    line = (f"s3: run {run_name(job)}: {BUCKET}/{prefix}{CHECKPOINT_FILE} differs from the checksum written with it "
            "(a damaged copy): discarded, training it from the start")
    assert stage_check() == "".join(line.split()) and files() == []
    RunStore(location).save_state({"model": {"w": weight}, "epoch": 0, "job": job.to_dict()})
    client.delete_object(Bucket=BUCKET, Key=f"{prefix}{CHECKSUM_FILE}")
    assert "".join(f"{CHECKPOINT_FILE} has no checksum beside it".split()) in stage_check() and files() == []


def test_cli_prints_the_storage_uri_and_fails_clearly(tmp_path, capsys):
    from pipeline.cluster.remote import main

    assert main(["ray-uri", "--url", "s3://bucket/ray", "--endpoint-url", "http://127.0.0.1:9000"]) == 0
    assert capsys.readouterr().out == "s3://bucket/ray?endpoint_override=127.0.0.1:9000&scheme=http\n"
    assert main(["configure", "--repo", str(tmp_path), "--url", "s3://AKIAIOSFODNN7EXAMPLE:s3cr3t@bucket"]) == 2
    said = capsys.readouterr().err
    assert said.startswith("error: remote URL carries credentials") and "s3cr3t" not in said
