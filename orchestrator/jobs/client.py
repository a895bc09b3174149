"""The Ray Jobs API of a cluster (its dashboard's HTTP address), with errors that say what to do.

Token authentication is Ray's own: with RAY_AUTH_MODE=token in the environment, Ray's
JobSubmissionClient sends the token it finds in RAY_AUTH_TOKEN, the file named by
RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (the same as `ray job submit`); sslab adds nothing.
"""
import contextlib
import os

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
TOKEN_SOURCES = ("RAY_AUTH_TOKEN=..., or RAY_AUTH_TOKEN_PATH=FILE, or the file ~/.ray/auth_token "
                 "(Ray reads them in that order)")

class JobError(RuntimeError):
    """The cluster could not be reached, refused the request, or has no such job."""


def address_of(address: str | None) -> str:
    """--address, else RAY_ADDRESS, else the dashboard of a Ray started on this machine."""
    return address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


@contextlib.contextmanager
def job_errors(address: str, job_id: str | None = None):
    """Turn the Jobs API's exceptions into a JobError that names the address (and job) and the fix."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except JobError:
        raise
    except AuthenticationError as error:
        if str(error).startswith("Authentication failed"):  # 403: a token was sent and refused
            hint = f"the token was refused; check which one Ray found: {TOKEN_SOURCES}"
        elif os.environ.get("RAY_AUTH_MODE", "").lower() != "token":  # 401: Ray sends a token only in token mode
            hint = f"the cluster requires a token: set RAY_AUTH_MODE=token and supply it: {TOKEN_SOURCES}"
        else:
            hint = f"RAY_AUTH_MODE=token is set but Ray found no token: {TOKEN_SOURCES}"
        raise JobError(f"{address}: Ray token authentication: {hint}") from None
    except (ConnectionError, requests.exceptions.RequestException) as error:
        raise JobError(f"cannot reach a Ray dashboard at {address} ({error}); give its address with --address "
                       f"http://HEAD:8265 or RAY_ADDRESS") from None
    except RuntimeError as error:
        if job_id is not None and "does not exist" in str(error):
            raise JobError(f"no job {job_id!r} on the cluster at {address} (sslab status lists the sweeps)") from None
        raise JobError(f"{address}: {error}") from None


def connect(address: str | None):
    """A JobSubmissionClient for the dashboard at `address` (see address_of)."""
    from ray.job_submission import JobSubmissionClient

    address = address_of(address)
    if "://" in address and address.partition("://")[0] not in ("http", "https", "ray"):
        raise JobError(f"{address}: unsupported scheme {address.partition('://')[0]!r}; give the cluster's dashboard "
                       "as --address http://HEAD:8265 (or https://) or RAY_ADDRESS")
    with job_errors(address), without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        # Ray lets these variables override the address it is given: the address asked for wins here.
        return JobSubmissionClient(address)


@contextlib.contextmanager
def without_env(*names: str):
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def sslab_jobs(client, study: str | None = None) -> list:
    """The jobs submitted by `sslab sweep` (optionally of one study), oldest first."""
    jobs = [job for job in client.list_jobs() if (job.metadata or {}).get("sslab") == "sweep"
            and (study is None or job.metadata.get("sslab.study") == study)]
    return sorted(jobs, key=lambda job: job.start_time or 0)
