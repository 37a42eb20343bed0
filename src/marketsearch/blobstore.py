"""Files by name in a local directory or under an S3 prefix: where the caches that must outlive
a pod live (``data.shard_cache``, ``image_model.feature_cache``; on EKS, the data bucket).

``open_store("runs/cache/x")`` and ``open_store("s3://bucket/cache/x", endpoint_url)`` give one
interface; a name is a '/'-separated path under the store's root. Both keep these promises:

- A file (``writing``, ``write_bytes``) is whole or absent: a local one is written beside and
  renamed in; an S3 object is whole by itself (a PUT lands or it does not).
- An entry of several files (``writing_tree``) is trusted only once its marker file is there:
  ``reading_tree`` yields None until then. A local entry is written beside and renamed in
  whole. On S3 every other file is uploaded first and the marker last, so a writer killed
  midway leaves objects that no reader trusts, and the next writer of that name uploads them
  all again. Two writers of one name: locally the first rename wins and the other copy is
  dropped; on S3 a writer that finds the marker uploads nothing (the first complete entry
  wins), and two that race before either is complete both upload every file (the last upload
  of a file wins). Either is fine where entries of one name hold the same content, as the
  caches' do (their names are content hashes).
- S3 reads go through scratch files in the temp directory, removed when the ``with`` ends.

The S3 client is the S3 source's (``sources.s3_client``): the endpoint from config (None: AWS,
or boto3's ``$AWS_ENDPOINT_URL_S3``), credentials from the environment (IRSA on EKS). A missing
bucket, denied access, missing credentials or an unreachable endpoint raise StoreError naming
the URI, already when the store is opened (it lists the prefix once).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# S3 error codes that mean "these credentials may not do this here".
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
           "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
_MISSING = {"404", "NoSuchKey", "NotFound"}


class StoreError(RuntimeError):
    """An S3 store that cannot be used: no such bucket, access denied, no credentials, no
    endpoint. The message names the store's URI."""


def is_s3(where) -> bool:
    return str(where).startswith("s3://")


def location(cfg, where: str | None) -> str | Path | None:
    """A config value naming a store: an s3:// URI as it is, a local path with ``{run_dir}``
    filled in; None or "" (the cache is off) stays None."""
    if not where:
        return None
    return where if is_s3(where) else cfg.path(where)


def open_store(where: str | Path, endpoint_url: str | None = None) -> "LocalStore | S3Store":
    """The store at a local directory or an s3://bucket/prefix (``endpoint_url``: its S3
    endpoint, for MinIO or a test server)."""
    return S3Store(str(where), endpoint_url) if is_s3(where) else LocalStore(where)


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="marketsearch-store-") as tmp:
        yield Path(tmp)


def _files(directory: Path) -> list[str]:
    """The files under ``directory`` as '/'-separated names, staging files (a part of the path
    starting with '.') left out."""
    names = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return sorted(n for n in names if not any(part.startswith(".") for part in n.split("/")))


class LocalStore:
    """Files under a local directory."""
    local = True

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.uri!r})"

    def list(self, prefix: str = "") -> list[str]:
        """The names of the files under ``prefix`` (a folder name ending in '/', or '')."""
        base = self.root / prefix
        return [prefix + name for name in _files(base)] if base.is_dir() else []

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    @contextmanager
    def reading(self, name: str) -> Iterator[Path]:
        """A local path of the file ``name`` (here: the file itself)."""
        yield self.root / name

    @contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A path to write the file ``name`` at; it is renamed in (after an fsync) when the
        ``with`` ends without an error, and dropped otherwise."""
        final = self.root / name
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.tmp{final.suffix}")
        try:
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            tmp.replace(final)
        finally:
            tmp.unlink(missing_ok=True)

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.writing(name) as tmp:
            tmp.write_bytes(data)

    @contextmanager
    def reading_tree(self, name: str, marker: str) -> Iterator[Path | None]:
        """The folder of the entry ``name``, or None where it has no ``marker``."""
        entry = self.root / name
        yield entry if (entry / marker).is_file() else None

    @contextmanager
    def writing_tree(self, name: str, marker: str) -> Iterator[Path]:
        """A folder to fill with the entry ``name`` (``marker`` among its files); renamed in
        whole when the ``with`` ends, unless the entry is there already (the first wins)."""
        final = self.root / name
        staged = final.with_name(f".{final.name}-{uuid.uuid4().hex[:8]}")
        staged.mkdir(parents=True)
        try:
            yield staged
            if not (staged / marker).is_file():
                raise ValueError(f"entry {name} of {self.uri} has no {marker}")
            if not final.exists():
                try:
                    staged.rename(final)
                except OSError:
                    if not final.exists():       # not a concurrent writer's entry: a real error
                        raise
        finally:
            shutil.rmtree(staged, ignore_errors=True)


class S3Store:
    """Objects under s3://bucket/prefix/ (module docstring: what it promises)."""
    local = False

    def __init__(self, uri: str, endpoint_url: str | None = None):
        from marketsearch.sources import parse_s3_uri, s3_client

        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.client = s3_client(endpoint_url)
        with self._errors("list"):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r})"

    @contextmanager
    def _errors(self, doing: str):
        """S3 errors that make the store unusable, as StoreError naming the URI; the others
        (an absent object) as they are."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise StoreError(f"{self.uri}: the bucket {self.bucket!r} does not exist "
                                 f"(could not {doing})") from exc
            if code in _DENIED:
                raise StoreError(f"{self.uri}: access denied ({code}) to {doing}: the "
                                 "credentials (on EKS the pipeline's IAM role) need "
                                 "s3:ListBucket, s3:GetObject and s3:PutObject there") from exc
            raise
        except (BotoCoreError, S3UploadFailedError) as exc:
            raise StoreError(f"{self.uri}: could not {doing}: {exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        """The names of the objects under ``prefix`` (a folder name ending in '/', or '')."""
        names = []
        with self._errors(f"list {prefix or '/'}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self.prefix + prefix):
                names += [obj["Key"][len(self.prefix):] for obj in page.get("Contents", [])]
        return sorted(names)

    def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._errors(f"read {name}"):
                self.client.head_object(Bucket=self.bucket, Key=self.prefix + name)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING:
                return False
            raise
        return True

    def read_bytes(self, name: str) -> bytes:
        with self._errors(f"read {name}"):
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()

    def write_bytes(self, name: str, data: bytes) -> None:
        with self._errors(f"write {name}"):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def _download(self, name: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(f"read {name}"):
            self.client.download_file(self.bucket, self.prefix + name, str(path))

    def _upload(self, path: Path, name: str) -> None:
        with self._errors(f"write {name}"):
            self.client.upload_file(str(path), self.bucket, self.prefix + name)

    @contextmanager
    def reading(self, name: str) -> Iterator[Path]:
        """A scratch copy of the object ``name``, removed when the ``with`` ends."""
        with _scratch() as tmp:
            path = tmp / name.rsplit("/", 1)[-1]
            self._download(name, path)
            yield path

    @contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A scratch path to write the object ``name`` at, uploaded when the ``with`` ends
        without an error."""
        with _scratch() as tmp:
            path = tmp / name.rsplit("/", 1)[-1]
            yield path
            self._upload(path, name)

    @contextmanager
    def reading_tree(self, name: str, marker: str) -> Iterator[Path | None]:
        """A scratch copy of the entry ``name`` (its objects under ``name/``), or None where it
        has no ``marker``."""
        if not self.exists(f"{name}/{marker}"):
            yield None
            return
        with _scratch() as tmp:
            for key in self.list(f"{name}/"):
                self._download(key, tmp / key[len(name) + 1:])
            yield tmp

    @contextmanager
    def writing_tree(self, name: str, marker: str) -> Iterator[Path]:
        """A scratch folder to fill with the entry ``name``; when the ``with`` ends its files
        are uploaded, ``marker`` last, unless the entry is complete there already."""
        with _scratch() as tmp:
            yield tmp
            files = _files(tmp)
            if marker not in files:
                raise ValueError(f"entry {name} of {self.uri} has no {marker}")
            if self.exists(f"{name}/{marker}"):
                log.info("%s/%s is there already: not uploaded again", self.uri, name)
                return
            for rel in [f for f in files if f != marker] + [marker]:
                self._upload(tmp / rel, f"{name}/{rel}")
