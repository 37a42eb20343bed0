"""Where KServe reads the bundle from: a KFP artifact's URI made readable by KServe's storage
initializer, or the bundle uploaded under ``kserve.model_uri_prefix``."""
from __future__ import annotations

import logging
from pathlib import Path

from marketsearch.config import Config

log = logging.getLogger(__name__)

# --- where KServe reads the bundle from ------------------------------------------------------
_KFP_LOCAL_PREFIXES = {"/s3/": "s3://", "/minio/": "s3://", "/gcs/": "gs://"}


def storage_uri_for(artifact: str) -> str:
    """The URI KServe's storage initializer can read for a KFP artifact URI (or its local path).

    s3:// and gs:// are kept; KFP's minio://bucket/key is S3 on MinIO, so s3://bucket/key (the
    model-server service account's S3 endpoint must then be that MinIO); KFP's local mounts
    /s3/, /minio/, /gcs/ map back to their URIs. Anything else cannot be served from a cluster.
    """
    text = str(artifact)
    if text.startswith(("s3://", "gs://")):
        return text.rstrip("/")
    if text.startswith("minio://"):
        return "s3://" + text.removeprefix("minio://").rstrip("/")
    for local, scheme in _KFP_LOCAL_PREFIXES.items():
        if text.startswith(local):
            return scheme + text.removeprefix(local).rstrip("/")
    raise ValueError(f"bundle {text!r} is not in object storage, so KServe cannot download it: run "
                     "the pipeline with an s3:// pipeline root, or set kserve.model_uri_prefix "
                     "to an s3:// location the deploy step uploads the bundle to")


def upload_bundle(cfg: Config, bundle_dir: str | Path, version: str) -> str:
    """Upload a bundle directory to ``<kserve.model_uri_prefix>/<version>/``; return that URI."""
    from marketsearch.sources import parse_s3_uri, s3_client

    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise FileNotFoundError(f"bundle directory {bundle_dir} not found")
    bucket, prefix = parse_s3_uri(cfg.kserve.model_uri_prefix)
    prefix = f"{prefix}{version}/"
    client = s3_client(cfg.kserve.s3_endpoint_url)
    files = sorted(p for p in bundle_dir.rglob("*") if p.is_file())
    for path in files:
        client.upload_file(str(path), bucket, prefix + path.relative_to(bundle_dir).as_posix())
    uri = f"s3://{bucket}/{prefix.rstrip('/')}"
    log.info("uploaded bundle %s (%d files) to %s", bundle_dir, len(files), uri)
    return uri


def verify_uploaded(cfg: Config, uri: str) -> str:
    """Check the bundle at ``uri`` (s3://bucket/prefix, what KServe will download) against its
    own ``checksums.json``, reading every object back; return the manifest's sha256. Raises
    IntegrityError naming the first object that is missing, extra or different: nothing is
    rolled out to a bundle that is not, byte for byte, the one evaluate passed."""
    import hashlib

    from marketsearch import checksums
    from marketsearch.sources import parse_s3_uri, s3_client

    if not uri.startswith("s3://"):
        raise ValueError(f"deploy verifies the bundle where KServe reads it before rolling out, "
                         f"and can read only s3:// (got {uri!r})")
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(cfg.kserve.s3_endpoint_url)
    keys = [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])]
    names = {key.removeprefix(prefix) for key in keys}
    if checksums.CHECKSUMS_FILE not in names:
        raise checksums.IntegrityError(f"bundle {uri} has no {checksums.CHECKSUMS_FILE}: "
                                       "the upload is incomplete or it is not a bundle")
    manifest = client.get_object(Bucket=bucket, Key=prefix + checksums.CHECKSUMS_FILE)["Body"].read()

    def sha256(name: str) -> str:
        digest = hashlib.sha256()
        body = client.get_object(Bucket=bucket, Key=prefix + name)["Body"]
        for block in iter(lambda: body.read(checksums.CHUNK), b""):
            digest.update(block)
        return digest.hexdigest()

    checksums.check(f"bundle {uri}", manifest, sorted(names - checksums.UNLISTED), sha256)
    log.info("verified bundle %s against its checksums (%d files)", uri,
             len(names - checksums.UNLISTED))
    return hashlib.sha256(manifest).hexdigest()
