"""Before any work: is every service the config names reachable from here?

A dead tracking server, database or S3 endpoint otherwise shows late (after Ray started and data
loaded) or as a long silent wait inside a client's own retries. Every service is probed once, all in
parallel, each with short timeouts and no retries, so the whole check answers within CHECK_SECONDS.
An unreachable one raises ServiceError (a ConfigError: the CLI exits 2) naming the setting and the
address, never a password.
"""
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from orchestrator.config.loader import ConfigError
from orchestrator.config.local_paths import local_store_path
from orchestrator.config.schema import SSLabConfig
from orchestrator.config.secrets import redact_text
from orchestrator.ray_runtime import use_retry_env

CHECK_SECONDS = 15.0  # the whole check, all probes together
PROBE_SECONDS = 5.0  # one probe's connect (and read) timeout: leaves room under CHECK_SECONDS
CREDENTIALS = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an AWS profile or an instance role"


class ServiceError(ConfigError):
    """A service the config names cannot be reached (or refuses us): setting, address, why."""


@dataclass
class Probe:
    key: str  # the setting, e.g. tracking.uri
    address: str  # what is shown: the URL without its password
    check: Callable[[], None]  # raises with the reason


def shown(text: str) -> str:
    """The text with every URL password masked (user:***@host): what an error may print."""
    return redact_text(text)


def check_services(config: SSLabConfig, seconds: float = CHECK_SECONDS) -> None:
    """Probe every service of an absolute-path config in parallel; raise ServiceError naming each one
    that does not answer, or refuses, within `seconds` in total. Then the clients' retries are bounded for
    the rest of the run (ray_runtime.RETRY_ENV: a service that goes away later fails the run in seconds)."""
    use_retry_env()
    found = probes(config)
    if not found:
        return
    pool = ThreadPoolExecutor(max_workers=len(found), thread_name_prefix="sslab-probe")
    futures = {pool.submit(probe.check): probe for probe in found}
    started = time.monotonic()
    done, pending = wait(futures, timeout=seconds)
    pool.shutdown(wait=False, cancel_futures=True)  # a probe still hanging ends at its own timeout
    problems = [f"{futures[f].key}: {futures[f].address} did not answer within {seconds:g} s" for f in pending]
    for future in done:
        if future.exception() is not None:
            probe = futures[future]
            problems.append(f"{probe.key}: {probe.address}: {future.exception()}")
    if problems:
        took = time.monotonic() - started
        raise ServiceError(shown(f"unreachable services (checked before any work, {took:.1f} s):\n  "
                                 + "\n  ".join(sorted(problems))))


def probes(config: SSLabConfig) -> list[Probe]:
    """One probe per distinct (setting, service) the config names."""
    found = [store_probe("tracking.uri", config.tracking.uri)]
    if config.search is not None and config.search.storage:
        found.append(store_probe("search.storage", config.search.storage))
    artifacts = os.environ.get("MLFLOW_S3_ENDPOINT_URL")  # MLflow's own S3 endpoint setting for artifacts
    s3_uses = [("tracking.artifact_location", config.tracking.artifact_location, artifacts),
               ("storage.path", config.storage.path, None),
               ("data.uri", config.data.uri, config.data.s3_endpoint_url),
               ("data.test_uri", config.data.test_uri, config.data.s3_endpoint_url),
               ("eval.images_uri", config.eval.images_uri, config.data.s3_endpoint_url)]
    for key, uri, endpoint in s3_uses:
        if uri and uri.startswith("s3://"):
            found.append(Probe(key, uri.partition("#")[0], lambda uri=uri, endpoint=endpoint: head_bucket(uri, endpoint)))
    if not config.storage.path.startswith(("s3://", "gs://", "hdfs://")) and "://" not in config.storage.path:
        found.append(Probe("storage.path", config.storage.path, lambda: writable_folder(config.storage.path)))
    return [probe for probe in found if probe is not None]


def store_probe(key: str, url: str) -> Probe | None:
    """MLflow's tracking URI or Optuna's storage: a server URL, a database URL or a local file."""
    if url.startswith(("http://", "https://")):
        return Probe(key, shown(url), lambda: http_alive(url))
    path = local_store_path(url)
    if path is not None:
        return None if path == ":memory:" else Probe(key, shown(url), lambda: writable_folder(os.path.dirname(path)))
    if url.startswith("file:"):
        return Probe(key, url, lambda: writable_folder(urlsplit(url).path))
    if "://" in url:  # postgresql://, mysql+pymysql://, ...
        return Probe(key, shown(url), lambda: database_connects(url))
    return None  # databricks, a bare local folder (MLflow makes it), ...


def writable_folder(folder: str) -> None:
    """The folder (or the nearest existing folder above it, where it would be made) is writable."""
    existing = os.path.abspath(folder or ".")
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OSError(f"{existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"the folder {existing} is not writable by this user")


def http_alive(url: str) -> None:
    """An MLflow server answers /health (credentials, where set, are MLflow's own variables)."""
    import requests

    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    headers = {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"} if os.environ.get("MLFLOW_TRACKING_TOKEN") else {}
    try:
        answer = requests.get(url.rstrip("/") + "/health", timeout=(PROBE_SECONDS, PROBE_SECONDS), auth=auth,
                              headers=headers)
    except requests.RequestException as error:
        raise ConnectionError(f"no answer ({reason(error)}); is the MLflow server running "
                              f"and reachable from this machine?") from None
    if answer.status_code in (401, 403):
        raise PermissionError(f"the server refused the credentials (HTTP {answer.status_code}): set "
                              f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
    if answer.status_code >= 500:
        raise ConnectionError(f"the server answered HTTP {answer.status_code} to /health")


def database_connects(url: str) -> None:
    """One connection with a connect timeout (the drivers sslab's stores use all take connect_timeout)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    timeout = int(PROBE_SECONDS)
    connect_args = {"connect_timeout": timeout} if url.startswith(("postgresql", "mysql", "mariadb")) else {}
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"no database driver for this URL ({error.name} is not installed)") from None
    try:
        with engine.connect():
            pass
    except Exception as error:  # the drivers' errors have no common base below Exception
        raise ConnectionError(f"cannot connect ({reason(error)})") from None
    finally:
        engine.dispose()


def reason(error: BaseException) -> str:
    """The gist of a client's error ("[Errno 111] Connection refused", "timed out", a driver's message),
    without a URL's password."""
    text = str(getattr(error, "orig", None) or error).strip()
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        return errno[0].strip()
    if "timed out" in text.lower():
        return "timed out"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("(Background")]
    return shown("; ".join(lines))[:300] if lines else type(error).__name__


def s3_client(endpoint_url: str | None = None, connect_timeout: float = PROBE_SECONDS, attempts: int = 1):
    """A boto3 S3 client with bounded timeouts and botocore's standard retry mode (backoff with jitter,
    `attempts` in all). The endpoint: the given one, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (boto3 reads them)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=connect_timeout, read_timeout=connect_timeout,
                    retries={"mode": "standard", "total_max_attempts": attempts})
    # a session of its own: credentials are read now (the default session caches them) and threads share nothing
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def head_bucket(uri: str, endpoint_url: str | None) -> None:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket = urlsplit(uri).netloc
    client = s3_client(endpoint_url)
    where = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise PermissionError(f"credentials for s3://{bucket} are missing: set {CREDENTIALS}") from None
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken"):
            raise PermissionError(f"credentials for s3://{bucket} are refused by {where} ({code}): check "
                                  f"{CREDENTIALS}") from None
        if code in ("404", "NoSuchBucket"):
            raise FileNotFoundError(f"no bucket {bucket!r} at {where}") from None
        raise ConnectionError(f"{where} answered {code or error}") from None
    except BotoCoreError as error:  # EndpointConnectionError, ConnectTimeoutError, ...
        raise ConnectionError(f"cannot reach the S3 endpoint {where} ({error}); check AWS_ENDPOINT_URL / "
                              f"data.s3_endpoint_url") from None
