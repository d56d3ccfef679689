"""Versioned data and models on S3 (or an S3-compatible store such as MinIO) through DVC, and
Ray run storage on the same store.

Credentials never pass through this module into a file: they come from the standard AWS chain
(environment, shared profile / ``AWS_PROFILE``, instance or pod role), or from a remote's
``.dvc/config.local`` (git-ignored), which DVC reads itself.

* ``configure_remote`` writes a remote with DVC's own ``dvc remote add/modify`` and refuses
  anything secret, since ``.dvc/config`` is committed.
* ``check_remote`` resolves the remote the way ``dvc push`` will and asks S3 for its bucket, so
  missing or rejected credentials fail in seconds with what to set, not deep inside a push.
* ``ray_storage_uri`` turns a bucket URL and an endpoint into the ``storage_path`` that Ray
  (through ``pyarrow.fs.FileSystem.from_uri``) accepts.

CLI::

    python -m pipeline.cluster.remote configure --name storage --url s3://bucket/prefix [--endpoint-url URL] [--region R]
    python -m pipeline.cluster.remote check [--name storage]
    python -m pipeline.cluster.remote ray-uri --url s3://bucket/ray [--endpoint-url URL] [--region R]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

# Remote options that hold secrets (DVC's S3 schema plus the generic HTTP-style ones). They may
# live in .dvc/config.local, never in .dvc/config.
SECRET_OPTIONS = frozenset(
    {"access_key_id", "secret_access_key", "session_token", "sse_customer_key", "password", "token"}
)
# AWS access key ids have a fixed shape; one inside a URL or option value is a leak in the making.
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_REMOTE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
# S3 bucket naming rules (3-63 characters, lower case, digits, dots and hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# What the AWS credential chain (boto3 in DVC, the AWS C++ SDK in pyarrow) reads from the
# environment: the variables a Ray worker needs to reach the same store.
AWS_ENV_VARS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_CA_BUNDLE",
)
# head_bucket answers 403 without a body, so the code is often just the status.
_REJECTED = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
     "TokenRefreshRequired", "InvalidClientTokenId", "UnrecognizedClientException"}
)
_MISSING_BUCKET = frozenset({"404", "NoSuchBucket"})
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 10
MAX_ATTEMPTS = 2


class RemoteConfigError(ValueError):
    """A remote's settings are invalid or unsafe (secrets bound for a committed file)."""


class RemoteError(RuntimeError):
    """The remote could not be used: unreachable, refused, or DVC failed to configure it."""


class RemoteCredentialsError(RemoteError):
    """No AWS credentials were found for a remote, or S3 rejected them."""


class BucketNotFoundError(RemoteError):
    """The remote's bucket does not exist at its endpoint."""


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # without leading or trailing slashes; "" for the bucket's root

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class RemoteStatus:
    """A remote that answered: where it is and where its credentials came from (never what they are)."""

    name: str
    url: str
    endpoint_url: str | None
    region: str | None
    credential_source: str  # botocore's name for it: env, shared-credentials-file, iam-role, explicit, ...


def parse_s3_url(url: str) -> S3Url:
    """``s3://bucket[/prefix]`` -> its parts; anything else is a ``RemoteConfigError``."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise RemoteConfigError(f"remote URL {url!r} is not an S3 URL; expected s3://bucket[/prefix]")
    if "@" in parts.netloc:
        raise RemoteConfigError(
            "remote URL carries credentials before '@'; give s3://bucket[/prefix] and keep keys in the "
            "environment, an AWS profile or .dvc/config.local"
        )
    if parts.query or parts.fragment:
        raise RemoteConfigError(f"remote URL {url!r} must not have a query or fragment; expected s3://bucket[/prefix]")
    if not _BUCKET.fullmatch(parts.netloc):
        raise RemoteConfigError(
            f"remote URL {url!r}: bucket {parts.netloc!r} is not a valid S3 bucket name "
            "(3-63 characters: lower-case letters, digits, '.', '-')"
        )
    return S3Url(parts.netloc, parts.path.strip("/"))


def _check_endpoint(endpoint_url: str) -> tuple[str, str]:
    """``http(s)://host[:port]`` -> (scheme, host[:port])."""
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RemoteConfigError(
            f"endpoint URL {endpoint_url!r} must be http://host[:port] or https://host[:port]"
        )
    if "@" in parts.netloc or parts.query:
        raise RemoteConfigError(
            "endpoint URL carries credentials or a query; give http(s)://host[:port] only and keep keys "
            "in the environment, an AWS profile or .dvc/config.local"
        )
    if parts.path.strip("/"):
        raise RemoteConfigError(f"endpoint URL {endpoint_url!r} must not have a path; expected http(s)://host[:port]")
    try:
        port = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        port = -1
    if port in (-1, 0) or not parts.hostname or (port is None and parts.netloc.endswith(":")):
        raise RemoteConfigError(f"endpoint URL {endpoint_url!r} has no valid host and port; expected "
                                "http(s)://host[:port] with a port from 1 to 65535")
    return parts.scheme, parts.netloc


def _refuse_secrets(name: str, values: Mapping[str, str]) -> None:
    for option, value in values.items():
        if option in SECRET_OPTIONS:
            raise RemoteConfigError(
                f"refusing to write {option!r} of remote {name!r} to .dvc/config, which git commits; "
                f"use the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), an AWS profile "
                f"(AWS_PROFILE, or `dvc remote modify --local {name} profile PROFILE`), or run "
                f"`dvc remote modify --local {name} {option} ...` yourself (.dvc/config.local is git-ignored)"
            )
        if _ACCESS_KEY_ID.search(str(value)):
            raise RemoteConfigError(
                f"remote {name!r}: the value of {option!r} contains an AWS access key id; "
                "credentials do not belong in .dvc/config"
            )


def _dvc(repo_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo_dir, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RemoteError(f"`dvc {' '.join(args)}` failed in {repo_dir}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _dvc_dir(repo_dir: str | os.PathLike[str]) -> Path:
    dvc_dir = Path(repo_dir) / ".dvc"
    if not dvc_dir.is_dir():
        raise RemoteConfigError(f"{repo_dir} is not a DVC repository (no .dvc/); run `dvc init` there first")
    return dvc_dir


def configure_remote(
    repo_dir: str | os.PathLike[str],
    name: str,
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    default: bool = True,
    options: Mapping[str, str] | None = None,
) -> None:
    """Add (or replace) the S3 remote ``name`` in ``repo_dir``'s ``.dvc/config`` through DVC's CLI.

    ``endpoint_url`` points at an S3-compatible store (MinIO, Ceph, ...); ``options`` are further
    non-secret ``dvc remote modify`` settings (``profile``, ``read_timeout``, ...). Secret options
    and URLs carrying keys are refused before anything is written.
    """
    if not _REMOTE_NAME.fullmatch(name):
        raise RemoteConfigError(
            f"remote name {name!r} is invalid; use lower-case letters, digits, '-' and '_' (DVC lower-cases names)"
        )
    parse_s3_url(url)
    settings = dict(options or {})
    if endpoint_url is not None:
        _check_endpoint(endpoint_url)
        settings["endpointurl"] = endpoint_url
    if region is not None:
        settings["region"] = region
    _refuse_secrets(name, {"url": url, **settings})
    repo = _dvc_dir(repo_dir).parent
    # `add -f` replaces the whole section, so settings left from an earlier call do not linger.
    _dvc(repo, "remote", "add", *(["-d"] if default else []), "-f", name, url)
    for option, value in settings.items():
        _dvc(repo, "remote", "modify", name, option, str(value))


def _remote_settings(repo_dir: str | os.PathLike[str], name: str | None) -> tuple[str, dict[str, str]]:
    """The remote's merged settings (system, global, repo and local config), as ``dvc push`` sees them."""
    from dvc.config import Config

    config = Config(dvc_dir=_dvc_dir(repo_dir))
    remotes = config.get("remote", {})
    if name is None:
        name = config.get("core", {}).get("remote")
        if name is None:
            raise RemoteConfigError(
                f"no default remote; name one (known: {', '.join(sorted(remotes)) or 'none'}) or set one "
                "with `python -m pipeline.cluster.remote configure`"
            )
    if name not in remotes:
        raise RemoteConfigError(f"unknown remote {name!r}; known: {', '.join(sorted(remotes)) or 'none'}")
    committed = config.read("repo").get("remote", {}).get(name, {})
    leaked = sorted(SECRET_OPTIONS & set(committed))
    if leaked:
        raise RemoteConfigError(
            f"remote {name!r} keeps {', '.join(leaked)} in .dvc/config, which git commits; remove it "
            f"(`dvc remote modify --unset {name} OPTION`), rotate the key, and use the environment, "
            f"an AWS profile or `dvc remote modify --local {name} ...` instead"
        )
    return name, dict(remotes[name])


def _advice(name: str) -> str:
    return (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys), "
        f"or AWS_PROFILE=PROFILE for a profile in ~/.aws/credentials, or `dvc remote modify --local {name} "
        "profile PROFILE`; on EC2/EKS attach an instance or pod role"
    )


def check_remote(repo_dir: str | os.PathLike[str] = ".", name: str | None = None) -> RemoteStatus:
    """Resolve the remote (the default one when ``name`` is None) and ``head_bucket`` it.

    Credentials are found as DVC finds them: keys or a profile in the remote's local config,
    otherwise boto3's standard chain. Bounded in time: connect/read timeouts and two attempts.
    """
    name, settings = _remote_settings(repo_dir, name)
    url = settings.get("url", "")
    location = parse_s3_url(url)
    endpoint = settings.get("endpointurl")
    where = f"remote {name!r} ({url}{f' at {endpoint}' if endpoint else ''})"
    session, source = _session(settings, where, name)
    _head_bucket(session, settings, location.bucket, where, name, source)
    return RemoteStatus(name, url, endpoint, settings.get("region"), source)


def _session(settings: dict[str, str], where: str, name: str):
    """A boto3 session with the remote's credentials, and where they came from."""
    import boto3
    import botocore.session
    from botocore.exceptions import PartialCredentialsError, ProfileNotFound

    core = botocore.session.Session()
    # DVC's credentialpath/configpath override the shared files, as in `dvc push`.
    if settings.get("credentialpath"):
        core.set_config_variable("credentials_file", settings["credentialpath"])
    if settings.get("configpath"):
        core.set_config_variable("config_file", settings["configpath"])
    try:
        # A fresh session each call: boto3's default session caches the first credentials it finds.
        session = boto3.Session(
            botocore_session=core,
            aws_access_key_id=settings.get("access_key_id"),
            aws_secret_access_key=settings.get("secret_access_key"),
            aws_session_token=settings.get("session_token"),
            profile_name=settings.get("profile"),
            region_name=settings.get("region"),
        )
        credentials = session.get_credentials()
    except ProfileNotFound as error:
        raise RemoteCredentialsError(f"{where}: AWS profile not found ({error}); {_advice(name)}") from None
    except PartialCredentialsError as error:
        raise RemoteCredentialsError(f"{where}: incomplete AWS credentials ({error}); {_advice(name)}") from None
    if credentials is None:
        raise RemoteCredentialsError(f"{where}: no AWS credentials found; {_advice(name)}")
    return session, credentials.method


def _head_bucket(session, settings: dict[str, str], bucket: str, where: str, name: str, source: str) -> None:
    """Ask S3 for ``bucket``; every refusal becomes one error that says what to change."""
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    endpoint = settings.get("endpointurl")
    client = session.client(
        "s3",
        endpoint_url=endpoint,
        config=BotoConfig(
            connect_timeout=int(settings.get("connect_timeout", CONNECT_TIMEOUT_S)),
            read_timeout=int(settings.get("read_timeout", READ_TIMEOUT_S)),
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        ),
    )
    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise RemoteCredentialsError(f"{where}: no AWS credentials found; {_advice(name)}") from None
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _REJECTED:
            raise RemoteCredentialsError(
                f"{where}: S3 refused the credentials from {source} ({code}: the key is unknown or expired, "
                f"the secret does not match, or this identity may not access bucket {bucket!r}); "
                f"{_advice(name)}"
            ) from None
        if code in _MISSING_BUCKET:
            raise BucketNotFoundError(
                f"{where}: bucket {bucket!r} does not exist{f' at {endpoint}' if endpoint else ''}; "
                "create it or fix the remote's URL"
            ) from None
        if code in ("301", "PermanentRedirect"):
            raise RemoteError(
                f"{where}: bucket {bucket!r} lives in another region; "
                f"`dvc remote modify {name} region REGION`"
            ) from None
        raise RemoteError(f"{where}: head_bucket failed ({code})") from None
    except (BotoConnectionError, BotoCoreError) as error:
        raise RemoteError(f"{where}: cannot reach S3 ({type(error).__name__}: {error})") from None


def ray_storage_uri(url: str, endpoint_url: str | None = None, *, region: str | None = None) -> str:
    """The ``RunConfig(storage_path=...)`` / ``ray.storage_path`` string for ``url`` on ``endpoint_url``.

    Ray resolves storage with ``pyarrow.fs.FileSystem.from_uri``, which reads the S3 endpoint from
    the URI's query (``endpoint_override=host:port&scheme=http``) and strips it from the path.
    """
    location = parse_s3_url(url)
    query: dict[str, str] = {}
    if endpoint_url is not None:
        scheme, netloc = _check_endpoint(endpoint_url)
        query = {"endpoint_override": netloc, "scheme": scheme}
    if region is not None:
        query["region"] = region
    return f"{location}?{urlencode(query, safe=':')}" if query else str(location)


def ray_worker_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The AWS variables set here, for ``ray.init(runtime_env={"env_vars": ...})``.

    Ray workers inherit the environment of the node that started them, not the driver's: on a
    cluster started before the credentials were set, this is how they reach the workers. The
    values travel in the job's runtime environment, visible to whoever can inspect the cluster;
    on a shared cluster prefer node credentials (an instance role) and forward nothing.
    """
    environ = os.environ if environ is None else environ
    return {key: environ[key] for key in AWS_ENV_VARS if environ.get(key)}


def repro_and_push(repo_dir: str | os.PathLike[str] = ".") -> int:
    """``dvc repro``, then ``dvc push`` to the default remote: for a cluster job, whose workspace,
    ``dvc.lock`` and cache vanish with the cluster. Without a default remote it says that the
    results stay only where the job wrote them. Returns ``dvc repro``'s exit status."""
    repro = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo_dir, check=False)
    if repro.returncode != 0:
        return repro.returncode
    from dvc.config import Config

    if Config(dvc_dir=_dvc_dir(repo_dir)).get("core", {}).get("remote") is None:
        print("warning: no default DVC remote: the results stay only in this workspace "
              "(`python -m pipeline.cluster.remote configure` adds one)", file=sys.stderr)
        return 0
    return subprocess.run([sys.executable, "-m", "dvc", "push"], cwd=repo_dir, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cluster.remote", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    configure = commands.add_parser("configure", help="add or replace an S3 remote in .dvc/config (no secrets)")
    configure.add_argument("--name", default="storage")
    configure.add_argument("--url", required=True, help="s3://bucket[/prefix]")
    configure.add_argument("--endpoint-url", help="an S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    configure.add_argument("--region")
    configure.add_argument("--no-default", action="store_true", help="do not make it the default remote")
    check = commands.add_parser("check", help="check that the remote's bucket answers with the current credentials")
    check.add_argument("--name", help="the remote (default: the default remote)")
    uri = commands.add_parser("ray-uri", help="print the ray.storage_path for a bucket on an endpoint")
    uri.add_argument("--url", required=True, help="s3://bucket[/prefix]")
    uri.add_argument("--endpoint-url")
    uri.add_argument("--region")
    job = commands.add_parser("repro", help="dvc repro, then dvc push to the default remote (a cluster job)")
    for sub in (configure, check, job):
        sub.add_argument("--repo", default=".", help="the DVC repository (default: .)")
    args = parser.parse_args(argv)
    if args.command == "repro":
        return repro_and_push(args.repo)
    try:
        if args.command == "configure":
            configure_remote(args.repo, args.name, args.url, endpoint_url=args.endpoint_url, region=args.region,
                             default=not args.no_default)
            print(f"remote {args.name!r} -> {args.url}{f' at {args.endpoint_url}' if args.endpoint_url else ''}")
        elif args.command == "check":
            status = check_remote(args.repo, args.name)
            print(f"remote {status.name!r} ({status.url}) answers; credentials from {status.credential_source}")
        else:
            print(ray_storage_uri(args.url, args.endpoint_url, region=args.region))
    except (RemoteConfigError, RemoteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, RemoteConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
