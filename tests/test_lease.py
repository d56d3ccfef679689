"""Leases on run folders in S3 (pipeline.cluster.leases), against moto's S3 server on 127.0.0.1.

Two stages (here: two lease holders, in threads or in processes) on one run folder: the second
waits for the first, or stops naming it; a dead holder's lease expires and is taken over, by one
of two waiters only; a live one is renewed past its length; a lease lost is said. Lengths are a
second or two, so each test takes a few seconds: the store's clock counts whole seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from pipeline.cluster.leases import (
    LEASE_FILE,
    LeaseError,
    LeaseLostError,
    RunLease,
    lease_location,
    leased_runs,
)
from pipeline.cluster.remote import ray_storage_uri
from pipeline.runs.runlocks import RunBusyError
from tests.s3server import BUCKET, aws_sandbox, s3  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
# A stage in another process that holds one run's lease (renewing it) until it is killed.
HOLDER = """\
import sys, time
from pipeline.cluster.leases import leased_runs
with leased_runs([sys.argv[1]], stage="holder-stage", ttl_s=float(sys.argv[2])):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def storage(s3, monkeypatch) -> str:
    """Run storage of this test's own in the bucket, as ray.storage_path names it (endpoint in the query)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    return ray_storage_uri(f"s3://{BUCKET}/leases-{uuid.uuid4().hex[:8]}", s3.endpoint)


def _run(storage: str, name: str) -> str:
    path, query = storage.split("?", 1)
    return f"{path}/{name}?{query}"


def _record(s3, location: str) -> dict:
    where = lease_location(location)
    return json.loads(s3.client().get_object(Bucket=where.bucket, Key=where.key)["Body"].read())


def _lease_exists(s3, location: str) -> bool:
    where = lease_location(location)
    return where.key in s3.keys(where.key)


@pytest.fixture
def holder_process(storage):
    """Start HOLDER on a run (ttl in seconds) in a process of its own; killed at the end."""
    started: list[subprocess.Popen] = []

    def start(location: str, ttl_s: float) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, location, str(ttl_s)], cwd=REPO,
                                   env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline() == "held\n"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


def _wait_until_expired(lease: RunLease, limit_s: float = 10) -> None:
    deadline = time.monotonic() + limit_s
    while (holder := lease.read()[0]) is not None and holder.remaining_s > 0:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.2)


# --- where a lease lives ---------------------------------------------------------------------------


def test_the_lease_lives_in_the_run_folder_on_the_storage_uris_endpoint():
    where = lease_location("s3://bucket/ray/run-1?endpoint_override=127.0.0.1:9000&scheme=http&region=eu-west-1")
    assert (where.bucket, where.key, where.endpoint_url, where.region, where.run) == (
        "bucket", f"ray/run-1/{LEASE_FILE}", "http://127.0.0.1:9000", "eu-west-1", "run-1")
    assert str(where) == f"s3://bucket/ray/run-1/{LEASE_FILE}"
    assert lease_location("s3://bucket/run-2?endpoint_override=minio:9000").endpoint_url == "https://minio:9000"
    assert lease_location("s3://bucket/run-3").endpoint_url is None  # the AWS chain's (AWS_ENDPOINT_URL) or AWS's
    with pytest.raises(LeaseError, match="'s3://bucket' is not a run folder on S3"):
        lease_location("s3://bucket")


def test_an_endpoint_from_the_aws_chain_is_used(s3, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    location = f"s3://{BUCKET}/chain-{uuid.uuid4().hex[:8]}/run"
    with leased_runs([location], stage="chain"):
        assert _record(s3, location)["stage"] == "chain"
    assert not _lease_exists(s3, location)


def test_missing_credentials_fail_in_one_line(storage, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(LeaseError, match=r"run r: cannot write its lease s3://.*/r/trainer.lease \(NoCredentialsError"):
        with leased_runs([_run(storage, "r")], stage="nokeys"):
            pass


# --- (1) the second stage waits, then trains --------------------------------------------------------


def test_a_second_stage_waits_for_the_first_then_takes_the_run(s3, storage):
    location = _run(storage, "run-wait")
    got: list[tuple[float, str]] = []

    def second() -> None:
        with leased_runs([location], stage="second", wait_s=20):
            got.append((time.monotonic(), _record(s3, location)["stage"]))

    with leased_runs([location], stage="first") as [first]:
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(2.0)
        assert not got and _record(s3, location)["token"] == first.token  # still waiting
        released = time.monotonic()
    waiter.join(timeout=20)
    [(taken, stage)] = got
    assert stage == "second" and 0 <= taken - released < 3.0  # within a few polls of the release
    assert not _lease_exists(s3, location)  # given back by the second too


# --- (2) or stops, naming the holder ---------------------------------------------------------------


def test_a_second_stage_that_waits_in_vain_names_the_holder_and_when_its_lease_expires(storage, holder_process):
    location = _run(storage, "run-busy")
    holder = holder_process(location, 30)
    started = time.monotonic()
    with pytest.raises(RunBusyError) as error:
        with leased_runs([location], stage="second", wait_s=1.0):
            pytest.fail("took a lease that another stage holds")
    assert 1.0 <= time.monotonic() - started < 8.0
    message = str(error.value)
    assert "\n" not in message
    where = lease_location(location)
    assert message.startswith(f"run run-busy is being trained by process {holder.pid} on {socket.gethostname()} "
                              f"(stage holder-stage); its lease {where} expires at ")
    seconds = int(message.split(" UTC (in ")[1].split(" s)")[0])
    assert 20 <= seconds <= 31  # renewed every 10 s: at most 31 s left (30 s + the clock's second)
    assert message.endswith("unless renewed; wait for it to finish, or stop that process (a killed one's lease "
                            "expires by itself), then run the stage again")


# --- (3) a dead holder's lease expires and is taken over ------------------------------------------


def test_a_killed_holders_lease_expires_and_is_taken_over(s3, storage, holder_process):
    location = _run(storage, "run-dead")
    holder = holder_process(location, 2.0)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    killed = time.monotonic()
    with pytest.raises(RunBusyError, match=f"process {holder.pid} "):  # not yet expired: renewed < 2 s ago
        with leased_runs([location], stage="heir", wait_s=0):
            pass
    with leased_runs([location], stage="heir", wait_s=10) as [heir]:
        taken = time.monotonic() - killed
        record = _record(s3, location)
        assert (record["pid"], record["stage"], record["token"]) == (os.getpid(), "heir", heir.token)
    # Expired once 2 s + the clock's second have passed since its last renewal, seen within a poll.
    assert 1.0 <= taken < 6.0


# --- (4) of two waiters for an expired lease, one takes it ------------------------------------------


def test_of_two_waiters_for_an_expired_lease_exactly_one_takes_it(s3, storage):
    location = lease_location(_run(storage, "run-race"))
    dead = RunLease(location, "dead", ttl_s=0.5)
    assert dead.try_take() == (True, None)
    _wait_until_expired(dead)
    waiters = [RunLease(location, f"waiter-{i}", ttl_s=30) for i in range(2)]
    # Both read the expired lease before either writes: the worst interleaving. The writes then
    # reach the store one at a time (as S3 applies them; moto's threaded server checks a
    # condition and writes without a lock, so two writes at once could both pass there).
    both_read, one_at_a_time = threading.Barrier(2, timeout=10), threading.Lock()
    for waiter in waiters:
        put = waiter.client.put_object

        def gated(put=put, **request):
            if request.get("IfNoneMatch") != "*":  # every write but a create
                both_read.wait()
                with one_at_a_time:
                    return put(**request)
            return put(**request)

        waiter.client.put_object = gated
    results: dict[int, tuple] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, waiters[i].try_take())) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    won = [i for i in range(2) if results[i][0]]
    assert len(won) == 1, results
    winner, loser = waiters[won[0]], waiters[1 - won[0]]
    assert _record(s3, f"s3://{BUCKET}/{location.key.rsplit('/', 1)[0]}")["token"] == winner.token
    del loser.client.put_object
    taken, holder = loser.try_take()
    assert not taken and holder is not None and holder.token == winner.token and holder.stage == winner.owner["stage"]


# --- (5) a live holder keeps its lease past its length ----------------------------------------------


def test_renewal_keeps_a_lease_past_its_length(s3, storage):
    location = _run(storage, "run-renewed")
    rival = RunLease(lease_location(location), "rival", ttl_s=30)
    with leased_runs([location], stage="keeper", ttl_s=1.5) as [keeper]:
        started = time.monotonic()
        while time.monotonic() - started < 4.5:  # three lengths, each looked at six times
            taken, holder = rival.try_take()
            assert not taken, f"the lease was taken over {time.monotonic() - started:.1f} s after it was taken"
            if holder is not None:
                assert holder.token == keeper.token
            time.sleep(0.25)
        assert _record(s3, location)["write"] >= 6  # renewed every half second
    assert not _lease_exists(s3, location)


# --- a lease lost while training is said, and not deleted -------------------------------------------


def test_a_holder_whose_lease_was_taken_over_is_told_and_leaves_the_new_one(s3, storage):
    location = _run(storage, "run-lost")
    told: list[str] = []
    intruder = RunLease(lease_location(location), "intruder", ttl_s=30)
    with pytest.raises(LeaseLostError, match=r"run run-lost lost its lease s3://.*: process \d+ on .* "
                                             r"\(stage intruder\) took it over; another stage may be training"):
        with leased_runs([location], stage="victim", ttl_s=1.5, on_lost=told.append):
            # As if the store had been out of reach past the lease's length and another stage
            # took it over: a write that ignores our lease.
            assert _record(s3, location)["stage"] == "victim"
            where = lease_location(location)
            s3.client().put_object(Bucket=where.bucket, Key=where.key,
                                   Body=json.dumps({**intruder.owner, "write": 1}).encode())
            deadline = time.monotonic() + 5
            while not told and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(told) == 1 and "took it over" in told[0]
    assert _record(s3, location)["token"] == intruder.token  # not deleted by the one that lost it


# --- the stage's driver holds its runs through one_trainer_each -------------------------------------


def test_the_driver_leases_s3_runs_and_locks_local_ones(s3, storage, tmp_path):
    from pipeline.cluster.distributed import one_trainer_each
    from pipeline.runs.runlocks import LOCK_FILE

    with one_trainer_each(storage, ["run-x", "run-y"], "baseline"):
        for name in ("run-x", "run-y"):
            record = _record(s3, _run(storage, name))
            assert (record["pid"], record["stage"]) == (os.getpid(), "baseline")
    assert not _lease_exists(s3, _run(storage, "run-x")) and not _lease_exists(s3, _run(storage, "run-y"))
    with one_trainer_each(str(tmp_path), ["run-z"], "baseline"):
        assert json.loads((tmp_path / "run-z" / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_stage_gives_back_only_its_own_lease(s3, storage):
    location = _run(storage, "run-given-back")
    intruder = RunLease(lease_location(location), "intruder", ttl_s=30)
    with leased_runs([location], stage="leaver", ttl_s=30):  # next renewal in 10 s: the loss goes unnoticed
        where = lease_location(location)
        s3.client().put_object(Bucket=where.bucket, Key=where.key,
                               Body=json.dumps({**intruder.owner, "write": 1}).encode())
    assert _lease_exists(s3, location) and _record(s3, location)["token"] == intruder.token


def test_a_stage_that_loses_a_lease_ends_in_one_line_with_status_2(s3, storage):
    location = _run(storage, "run-stage-lost")
    stage = ("import sys, time\nfrom pipeline.cluster import lifeline\n"
             "from pipeline.cluster.leases import leased_runs\n"
             "with lifeline.running('train'), leased_runs([sys.argv[1]], stage='train', ttl_s=1.5):\n"
             "    print('held', flush=True)\n    time.sleep(60)\nprint('still running', flush=True)\n")
    started = subprocess.Popen([sys.executable, "-c", stage, location], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert started.stdout.readline() == "held\n"
        intruder = RunLease(lease_location(location), "intruder", ttl_s=30)
        where = lease_location(location)
        s3.client().put_object(Bucket=where.bucket, Key=where.key,
                               Body=json.dumps({**intruder.owner, "write": 1}).encode())
        out, err = started.communicate(timeout=30)
    finally:
        started.kill()
    assert started.returncode == 2 and out == ""
    assert err.startswith(f"error in stage train: run run-stage-lost lost its lease {where}: process {os.getpid()} on ")
    assert err.endswith("(stage intruder) took it over; another stage may be training it now, so this one stops\n")
    assert err.count("\n") == 1
