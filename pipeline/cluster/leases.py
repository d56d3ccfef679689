"""One trainer per run on S3: a lease on each run folder in the bucket.

Local run folders are locked with ``flock`` (:mod:`pipeline.runs.runlocks`), which the kernel
drops when its holder dies. An object store has neither a lock nor anyone to notice a dead
holder, so a stage that trains runs kept under ``s3://`` storage holds a *lease* on each: the
object ``<run folder>/trainer.lease``, naming its holder (host, pid, stage, a random token) and
the lease's length, :data:`LEASE_TTL_S`.

* Taking it: a put with ``If-None-Match: *``, which the store refuses (412) once the object
  exists, so of two stages only one creates it.
* Keeping it: a thread rewrites it every third of its length with ``If-Match`` on the ETag of the
  holder's own last write, so a renewal never overwrites a lease that another stage took over.
  Each write carries a new count, hence a new ETag: a waiter that read the lease before a renewal
  cannot take it over after it.
* A dead holder: a lease not rewritten for its length has expired. Its age is read on the store's
  own clock (the object's Last-Modified against the Date of the answer), so no two machines'
  clocks are compared. A waiter takes an expired lease over with ``If-Match`` on the ETag it read:
  of two waiters only one succeeds, and the other then sees a live lease.
* Giving it back: a delete with ``If-Match`` on the holder's last ETag, when the stage is done.

A second stage waits :data:`~pipeline.runs.runlocks.LOCK_WAIT_S`, as for a local lock, then stops
with a line naming the holder and when its lease expires. A holder that finds its lease taken
over, or cannot renew it for a whole length (the store unreachable), has lost it and another
stage may now train the run: the stage stops (:func:`pipeline.cluster.lifeline.stop_stage`).

The store must honour conditional writes (``If-None-Match`` and ``If-Match`` on PUT, ``If-Match``
on DELETE, answering 412): AWS S3 does, and so do current S3-compatible stores.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pipeline.cluster import lifeline
from pipeline.errors import UserError
from pipeline.runs.runlocks import LOCK_WAIT_S, RunBusyError

LEASE_FILE = "trainer.lease"
# A killed stage's runs are free again this long after its last renewal; a holder renews every
# third of it, so it keeps its lease through two failed renewals in a row.
LEASE_TTL_S = 60.0
# Last-Modified and Date count whole seconds: a lease has expired only once its age on that
# clock reaches its length plus this, so that it is never taken over early.
CLOCK_RESOLUTION_S = 1.0
POLL_S = 0.5  # as the local lock polls
# Answers that mean another stage got there first (or the lease changed under us): look again.
# 409 is S3's answer to two conditional writes of one key at the same moment.
_LOST_RACE = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"})


class LeaseError(UserError):
    """The store could not be asked about a lease (unreachable, refused, no conditional writes)."""


class LeaseLostError(UserError):
    """A lease that its holder lost while it trained (taken over, or not renewed in time)."""


@dataclass(frozen=True)
class LeaseLocation:
    """Where a run folder's lease lives, and how to reach it (the run location's query, as pyarrow reads it)."""

    bucket: str
    key: str
    endpoint_url: str | None
    region: str | None

    @property
    def run(self) -> str:
        return self.key.split("/")[-2]

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def lease_location(run_location: str) -> LeaseLocation:
    """The lease of the run folder at ``run_location`` (``s3://bucket/prefix/run?endpoint_override=...``)."""
    parts = urlsplit(run_location)
    if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
        raise LeaseError(f"run location {run_location!r} is not a run folder on S3; expected s3://bucket/prefix/run")
    query = dict(parse_qsl(parts.query))
    override = query.get("endpoint_override")
    endpoint = override if not override or "://" in override else f"{query.get('scheme', 'https')}://{override}"
    return LeaseLocation(parts.netloc, f"{parts.path.strip('/')}/{LEASE_FILE}", endpoint, query.get("region"))


def s3_client(location: LeaseLocation) -> Any:
    """An S3 client with the standard AWS chain's credentials (environment, profile, instance or
    pod role; ``AWS_ENDPOINT_URL`` when the location names no endpoint), bounded in time."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {"connect_timeout": 5, "read_timeout": 10,
                               "retries": {"max_attempts": 2, "mode": "standard"}}
    if location.endpoint_url:  # pyarrow addresses an endpoint override by path; so do we
        options["s3"] = {"addressing_style": "path"}
    return boto3.Session(region_name=location.region).client(
        "s3", endpoint_url=location.endpoint_url, config=Config(**options))


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as its object says, and until when (the store's clock)."""

    host: str
    pid: Any
    stage: str
    token: str
    expires: datetime
    remaining_s: float

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host} (stage {self.stage})"


def _code(error: Exception) -> str:
    response = getattr(error, "response", {}) or {}
    return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class RunLease:
    """The lease of one run folder, held (or wanted) by this process."""

    def __init__(self, location: LeaseLocation, stage: str, ttl_s: float = LEASE_TTL_S, client: Any = None) -> None:
        self.location = location
        self.ttl_s = ttl_s
        self.token = secrets.token_hex(16)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "stage": stage, "token": self.token,
                      "command": " ".join(sys.argv), "ttl_s": ttl_s}
        self.client = client if client is not None else s3_client(location)
        self.etag: str | None = None  # of our last write while we hold the lease
        self.written_at = 0.0  # time.monotonic() when our last successful write started
        self._writes = 0

    def _failed(self, action: str, error: Exception) -> LeaseError:
        return LeaseError(f"run {self.location.run}: cannot {action} its lease {self.location} "
                          f"({type(error).__name__}: {error})")

    def _write(self, **condition: str) -> bool:
        """Write the lease under ``condition``; False when the condition did not hold."""
        from botocore.exceptions import BotoCoreError, ClientError

        self._writes += 1
        body = json.dumps({**self.owner, "write": self._writes, "written": time.strftime("%Y-%m-%d %H:%M:%S")})
        started = time.monotonic()
        try:
            answer = self.client.put_object(Bucket=self.location.bucket, Key=self.location.key, Body=body.encode(),
                                            ContentType="application/json", **condition)
        except ClientError as error:
            if _code(error) in _LOST_RACE:
                return False
            raise self._failed("write", error) from None
        except BotoCoreError as error:
            raise self._failed("write", error) from None
        self.etag, self.written_at = answer["ETag"], started
        return True

    def read(self) -> tuple[Holder | None, str | None]:
        """The lease's holder and ETag; (None, None) when there is no lease."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key)
            body = answer["Body"].read()
        except ClientError as error:
            if _code(error) in ("NoSuchKey", "404"):
                return None, None
            raise self._failed("read", error) from None
        except BotoCoreError as error:
            raise self._failed("read", error) from None
        try:
            record = json.loads(body)
            ttl_s = float(record["ttl_s"])
        except (ValueError, KeyError, TypeError):  # not written by us: judged by our own length
            record, ttl_s = {}, self.ttl_s
        expires = answer["LastModified"] + timedelta(seconds=ttl_s + CLOCK_RESOLUTION_S)
        now = parsedate_to_datetime(answer["ResponseMetadata"]["HTTPHeaders"]["date"])
        holder = Holder(str(record.get("host", "?")), record.get("pid", "?"), str(record.get("stage", "?")),
                        str(record.get("token", "")), expires, (expires - now).total_seconds())
        return holder, answer["ETag"]

    def try_take(self) -> tuple[bool, Holder | None]:
        """One attempt: (True, None) once the lease is ours; else (False, its live holder), or
        (False, None) when it changed while we looked (look again)."""
        if self._write(IfNoneMatch="*"):
            return True, None
        holder, etag = self.read()
        if holder is None or etag is None:
            return False, None  # given back in between
        if holder.token == self.token:  # our create went through, its answer was lost (a retry met it)
            self.etag = etag
            return True, None
        if holder.remaining_s > 0:
            return False, holder
        # Expired: take it over only as it was when read, so that of two waiters one wins.
        return self._write(IfMatch=etag), None

    def renew(self) -> str | None:
        """Rewrite the lease if it is still ours; None while it is, else why it is lost."""
        try:
            if self._write(IfMatch=self.etag or ""):
                return None
            holder, etag = self.read()
            if holder is not None and holder.token == self.token and etag is not None:
                # Still ours (a retried write that went through): carry on from the current ETag.
                self.etag = etag
                return None if self._write(IfMatch=etag) else "it changed while it was renewed"
        except LeaseError as error:
            if time.monotonic() - self.written_at < self.ttl_s:
                return None  # not expired yet: the next renewal tries again
            return f"it could not be renewed for {self.ttl_s:g} s ({error})"
        return f"{holder} took it over" if holder is not None else "it was deleted"

    def release(self) -> None:
        """Delete the lease if it is still ours."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self.etag is None:
            return
        etag, self.etag = self.etag, None
        # Not ours any more (412), or the store unreachable: either way it expires by itself.
        with contextlib.suppress(ClientError, BotoCoreError):
            self.client.delete_object(Bucket=self.location.bucket, Key=self.location.key, IfMatch=etag)


def busy_message(lease: RunLease, holder: Holder | None) -> str:
    """The line a stage stops with when another one holds the run (in the words of
    :func:`pipeline.runs.runlocks.locked_runs`)."""
    if holder is None:
        return (f"run {lease.location.run} is being taken by another stage (its lease {lease.location} keeps "
                "changing); run the stage again")
    return (f"run {lease.location.run} is being trained by {holder}; its lease {lease.location} expires at "
            f"{holder.expires:%Y-%m-%d %H:%M:%S} UTC (in {max(holder.remaining_s, 0):.0f} s) unless renewed; "
            "wait for it to finish, or stop that process (a killed one's lease expires by itself), "
            "then run the stage again")


def take(lease: RunLease, wait_s: float = LOCK_WAIT_S) -> None:
    """Take ``lease``, waiting up to ``wait_s`` for its holder to give it back or let it expire."""
    deadline = time.monotonic() + wait_s
    while True:
        taken, holder = lease.try_take()
        if taken:
            return
        if time.monotonic() >= deadline:
            raise RunBusyError(busy_message(lease, holder))
        # None: it changed while we looked (given back, or another waiter took it): look again soon.
        time.sleep(POLL_S if holder is not None else POLL_S / 10)


def _renew_until(stop: threading.Event, held: list[RunLease], guard: threading.Lock, ttl_s: float,
                 lost: Callable[[RunLease, str], None]) -> None:
    while not stop.wait(ttl_s / 3):
        with guard:
            leases = list(held)
        for lease in leases:
            if lease.etag is not None and (why := lease.renew()) is not None:
                lease.etag = None  # lost: never renewed or deleted again
                lost(lease, why)


@contextlib.contextmanager
def leased_runs(locations: list[str], stage: str, wait_s: float = LOCK_WAIT_S, ttl_s: float = LEASE_TTL_S,
                on_lost: Callable[[str], None] = lifeline.stop_stage) -> Iterator[list[RunLease]]:
    """Hold the lease of every run folder in ``locations`` (``s3://`` URIs) while the block runs,
    renewing each every ``ttl_s / 3``. A lease lost meanwhile is told to ``on_lost`` (a stage
    stops there) and, should the block end anyway, raised as :class:`LeaseLostError`."""
    clients: dict[tuple[str | None, str | None], Any] = {}
    held: list[RunLease] = []
    problems: list[str] = []
    guard, stop = threading.Lock(), threading.Event()

    def lost(lease: RunLease, why: str) -> None:
        problem = (f"run {lease.location.run} lost its lease {lease.location}: {why}; another stage may be "
                   "training it now, so this one stops")
        problems.append(problem)
        on_lost(problem)

    renewer = threading.Thread(target=_renew_until, args=(stop, held, guard, ttl_s, lost),
                               name="csada-lease-renewal", daemon=True)
    renewer.start()  # before the first lease is taken: those taken renew while later ones are waited for
    try:
        for location in map(lease_location, locations):
            endpoint = (location.endpoint_url, location.region)
            client = clients[endpoint] = clients.get(endpoint) or s3_client(location)
            lease = RunLease(location, stage, ttl_s, client)
            take(lease, wait_s)
            with guard:
                held.append(lease)
        yield list(held)
    finally:
        stop.set()
        renewer.join()
        for lease in held:
            lease.release()
    if problems:
        raise LeaseLostError(problems[0])
