"""A directory's manifest of sha256 per file, and its verification.

A bundle is code as much as data (Keras files, a FAISS index, pickled-free but parsed
formats): build_index writes ``checksums.json`` as its last act, the registry records the
manifest's own digest with the model version, and the server, ``search``, evaluate and deploy
verify it before loading anything. A file that changed, went missing or appeared since is
refused by name.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

CHECKSUMS_FILE = "checksums.json"
# Written by deploy into the published copy, after the manifest: not part of it.
UNLISTED = frozenset({CHECKSUMS_FILE, "VERSION"})
CHUNK = 1 << 20


class IntegrityError(ValueError):
    """A directory does not match its manifest; the message names the file."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and str(p.relative_to(root)) not in UNLISTED)


def write(root: str | Path) -> str:
    """Write ``checksums.json`` for every file under ``root``; return the manifest's digest."""
    root = Path(root)
    manifest = {"format": 1, "files": {name: sha256_of(root / name) for name in _files(root)}}
    text = json.dumps(manifest, indent=1, sort_keys=True)
    (root / CHECKSUMS_FILE).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def digest(root: str | Path) -> str | None:
    """The manifest's own sha256 (what the registry records), or None without one."""
    path = Path(root) / CHECKSUMS_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def verify(root: str | Path, what: str = "bundle") -> str:
    """Check every file under ``root`` against its manifest; return the manifest's digest.
    Raises IntegrityError naming the first file that differs, is missing or is not listed."""
    root = Path(root)
    path = root / CHECKSUMS_FILE
    if not path.exists():
        raise IntegrityError(f"{what} {root} has no {CHECKSUMS_FILE}: it cannot be verified "
                             "(made before bundles carried one? rebuild it with build_index)")
    check(f"{what} {root}", path.read_bytes(), _files(root), lambda name: sha256_of(root / name))
    return digest(root)


def check(where: str, manifest: bytes, present: list[str], sha256: Callable[[str], str]) -> None:
    """Check the files ``present`` (names relative to the bundle, ``UNLISTED`` left out) against
    the manifest's text, hashing each with ``sha256(name)``: a directory here, objects in S3
    (marketsearch.kube.storage). Raises IntegrityError naming the first file that differs."""
    try:
        listed = json.loads(manifest)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{where}: {CHECKSUMS_FILE} is not a manifest ({exc})") from None
    for name in sorted(set(listed) - set(present)):
        raise IntegrityError(f"{where}: {name} is missing (listed in {CHECKSUMS_FILE})")
    for name in sorted(set(present) - set(listed)):
        raise IntegrityError(f"{where}: {name} is not in {CHECKSUMS_FILE} (added after "
                             "the bundle was built)")
    for name in sorted(present):
        if sha256(name) != listed[name]:
            raise IntegrityError(f"{where}: {name} does not match its sha256 in "
                                 f"{CHECKSUMS_FILE} (changed after the bundle was built)")
