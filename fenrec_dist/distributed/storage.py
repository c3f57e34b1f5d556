"""Run storage that is not the local disk: ``distributed.storage_path`` as ``s3://bucket/prefix``.

Ray Train writes the checkpoints there (every rank its own files) and the workers the
negative index files; the driver mirrors metrics.jsonl, final.json and config.yaml of its
local run directory into ``STORAGE/NAME/`` (``RunFiles``), so a driver on another machine
resumes from the bucket alone. Credentials come from the environment, never from the config
(a storage path holding them is refused) and are never printed. Only the S3 settings that are
not secret (endpoint, region, profile, CA bundle) go into the workers' runtime env
(``storage_env``): Ray's runtime_env_agent.log records a runtime env's variables verbatim, so
the keys reach the workers the way Ray's processes inherit their environment (the driver's,
for an embedded Ray; that of ``ray start`` or the node's instance role on a cluster).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pyarrow.fs as pafs

from fenrec_dist.config import ConfigError
from fenrec_dist.train.checkpoint import StorageError

# what pyarrow's S3FileSystem reads from the environment that is not a secret
STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
               "AWS_CA_BUNDLE")
SECRET_QUERY = ("access_key", "secret_key", "session_token")
RUN_FILES = ("config.yaml", "metrics.jsonl", "final.json")
# how every storage failure's one line ends (a worker's checkpoint upload, the driver's probe)
STOPPED = ("the run stopped, the checkpoints before it are as they were: run the same command again once the "
           "storage takes writes")


def is_uri(storage: str) -> bool:
    return "://" in storage


def join_uri(storage: str, name: str) -> str:
    """``STORAGE/NAME``, a URI's query (``?endpoint_override=...``) kept at its end."""
    if not is_uri(storage):
        return f"{storage.rstrip('/')}/{name}"
    parts = urlsplit(storage)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


def check_storage_path(storage: str) -> None:
    """A ConfigError (never echoing the secret) when ``storage`` carries credentials: a user
    part (``s3://KEY:SECRET@bucket``) or pyarrow's ``access_key``/``secret_key``/``session_token``."""
    if not is_uri(storage):
        return
    parts = urlsplit(storage)
    if "@" in parts.netloc or any(k in parse_qs(parts.query) for k in SECRET_QUERY):
        shown = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
        raise ConfigError(f"distributed.storage_path: {shown} carries credentials in the URL; set AWS_ACCESS_KEY_ID / "
                          f"AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL) in the environment or Ray's runtime env "
                          f"instead, never in the config", keys=["distributed.storage_path"])


def storage_env() -> dict[str, str]:
    """The S3 settings set here that are not secret, for the workers' runtime env (never the
    keys: Ray logs a runtime env's variables)."""
    return {k: os.environ[k] for k in STORAGE_ENV if os.environ.get(k)}


class RunFiles:
    """A run's small files (metrics.jsonl, final.json, config.yaml) in ``STORAGE/NAME/`` on a
    pyarrow filesystem. Errors are one-line ``StorageError``s naming the object."""

    def __init__(self, storage: str, name: str) -> None:
        self.uri = join_uri(storage, name)
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(self.uri)
        except (OSError, ValueError) as exc:
            raise StorageError(f"{self.uri}: storage not reachable ({_first(exc)})") from exc

    def upload(self, local: Path) -> None:
        """Copy the local file ``local`` to ``STORAGE/NAME/<its name>`` (one object, whole)."""
        dest = f"{self.base}/{local.name}"
        try:
            with self.fs.open_output_stream(dest) as f:
                f.write(local.read_bytes())
        except OSError as exc:
            raise StorageError(f"{self.uri}/{local.name}: cannot write to storage ({_first(exc)})") from exc

    def delete(self, name: str) -> None:
        """Remove ``STORAGE/NAME/name`` if it is there."""
        try:
            self.fs.delete_file(f"{self.base}/{name}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"{self.uri}/{name}: cannot delete from storage ({_first(exc)})") from exc

    def download(self, name: str, local: Path) -> bool:
        """Copy ``STORAGE/NAME/name`` over ``local``; False when storage has no such object."""
        src = f"{self.base}/{name}"
        try:
            if self.fs.get_file_info(src).type != pafs.FileType.File:
                return False
            with self.fs.open_input_stream(src) as f:
                data = f.read()
        except OSError as exc:
            raise StorageError(f"{self.uri}/{name}: cannot read from storage ({_first(exc)})") from exc
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        return True


def storage_failure(error: BaseException | None) -> StorageError | None:
    """The ``StorageError`` a worker raised inside Ray Train's run error (its worker failures,
    their causes), or None: the one line a failed run ends with."""
    todo: list[object] = [error]
    for _ in range(64):  # causes chain a few levels deep; never loop on a cycle
        if not todo:
            break
        e = todo.pop()
        if isinstance(e, StorageError):
            return e
        if isinstance(e, BaseException):
            todo += [*getattr(e, "worker_failures", {}).values(), getattr(e, "controller_failure", None),
                     getattr(e, "cause", None), e.__cause__]
    return None


def storage_down(error: BaseException | None, storage: str, name: str) -> StorageError | None:
    """A worker's ``StorageError`` inside ``error`` (``storage_failure``), or, when Ray Train's
    own controller failed (it writes its checkpoint snapshot to the same storage) and the run's
    storage no longer answers, one line naming ``STORAGE/NAME``; None otherwise."""
    if error is None:
        return None
    if (lost := storage_failure(error)) is not None:
        return lost
    uri = join_uri(storage, name)
    try:
        if is_uri(storage):
            remote = RunFiles(storage, name)
            remote.fs.get_file_info(remote.base)
        elif Path(uri).is_dir():  # a local path that is there and no longer takes writes
            probe = Path(uri) / ".fenrec-write-probe"
            probe.write_bytes(b"")
            probe.unlink()
    except (OSError, StorageError) as exc:
        cause = _first(exc.__cause__ or exc)
        return StorageError(f"{uri}: storage not reachable ({cause}); {STOPPED}")
    return None


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
