"""Publishing a bundle where the local model server reads it: complete on disk first, swapped in
with one atomic step, undone when the registry does not follow, and recovered after a crash.

``serving.model_dir`` is a symlink to one of the bundles under ``<its parent>/.bundles/``:

1. under an exclusive lock (a second deploy fails at once, naming the lock), the bundle is
   copied into a fresh uniquely named directory there, verified against its checksums, with
   ``VERSION`` written into it, and every file and directory fsynced;
2. a journal records the swap about to happen (the previous target and the new one);
3. the symlink is replaced by ``rename`` (atomic: a reader sees the old bundle or the new one,
   never a mixture or nothing);
4. the caller moves the registry alias (``deploy``), then the journal is cleared. If moving the
   alias fails, the previous target is swapped back.

A deploy killed at any point leaves the served link on a complete bundle. Killed between the
swap and the alias, the link names the new bundle while the registry still names the old
champion: the journal says so, and ``recover`` (run by every deploy before it starts, and by
``marketsearch serve``) swaps the previous bundle back unless the registry did move.
The last ``KEEP`` bundles stay for rollback (and for a server still reading the old one).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from marketsearch import checksums
from marketsearch.faults import crash_point

log = logging.getLogger(__name__)

BUNDLES_DIR = ".bundles"
VERSION_FILE = "VERSION"
KEEP = 3
# Where the crash tests kill a deploy (marketsearch.faults).
CRASH_POINTS = ("before_copy", "mid_copy", "after_copy", "after_swap", "after_alias")


class DeployLockError(RuntimeError):
    """Another deploy of the same served directory is running."""


def _paths(served: Path) -> tuple[Path, Path, Path]:
    served = Path(served)
    return served.parent / BUNDLES_DIR, served.parent / f".{served.name}.lock", \
        served.parent / f".{served.name}.journal.json"


@contextlib.contextmanager
def deploy_lock(served: str | Path) -> Iterator[None]:
    """Hold the served directory's deploy lock; refuse at once if another deploy holds it."""
    _, lock_path, _ = _paths(Path(served))
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise DeployLockError(f"another deploy of {served} is running (lock {lock_path} held "
                                  f"by {fh.read().strip() or 'another process'}); not deploying "
                                  "over it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage(src: str | Path, served: str | Path, version_info: dict) -> Path:
    """Copy the bundle ``src`` into a fresh directory beside ``served``, with ``VERSION``;
    everything fsynced. Returns the new directory (not yet served)."""
    bundles, _, _ = _paths(Path(served))
    bundles.mkdir(parents=True, exist_ok=True)
    target = bundles / f"{version_info.get('version', 'v')}-{uuid.uuid4().hex[:8]}"
    crash_point("before_copy")
    shutil.copytree(src, target, copy_function=_copy_then_maybe_crash)
    checksums.verify(target, "the copied bundle")      # the copy is what was built
    (target / VERSION_FILE).write_text(json.dumps(version_info))
    _fsync_tree(target)
    crash_point("after_copy")
    return target


_copied = 0


def _copy_then_maybe_crash(a, b):
    global _copied
    shutil.copy2(a, b)
    _copied += 1
    if _copied == 2:
        crash_point("mid_copy")


def current_target(served: str | Path) -> Path | None:
    served = Path(served)
    return served.resolve() if served.is_symlink() else (served if served.exists() else None)


def swap(served: str | Path, new: Path) -> Path | None:
    """Point ``served`` at ``new`` in one rename; returns what it pointed at before. A served
    directory of the layout before symlinks is moved under ``.bundles/`` first."""
    served = Path(served)
    bundles, _, _ = _paths(served)
    previous = current_target(served)
    if served.exists() and not served.is_symlink():       # the old layout: a real directory
        previous = bundles / f"pre-symlink-{uuid.uuid4().hex[:8]}"
        served.rename(previous)
    link = served.with_name(f".{served.name}.{uuid.uuid4().hex[:8]}.link")
    link.symlink_to(os.path.relpath(new, served.parent))
    os.replace(link, served)
    _fsync_dir(served.parent)
    return previous


def publish(src: str | Path, served: str | Path, version_info: dict,
            move_alias: Callable[[], None]) -> Path:
    """Steps 1-4 of the module docstring; the caller holds ``deploy_lock``. ``move_alias`` moves
    the registry; if it raises, the previous bundle is swapped back and the error re-raised."""
    served = Path(served)
    _, _, journal = _paths(served)
    new = stage(src, served, version_info)
    previous = current_target(served)
    journal.write_text(json.dumps({"version": str(version_info.get("version")),
                                   "new": str(new), "previous": str(previous or "")}))
    _fsync_dir(journal.parent)
    swap(served, new)
    crash_point("after_swap")
    try:
        move_alias()
    except BaseException:
        if previous is not None:
            swap(served, previous)
        log.error("publish: the registry did not follow; %s serves %s again", served, previous)
        raise
    crash_point("after_alias")
    journal.unlink()
    prune(served)
    return new


def recover(served: str | Path, champion_version: str | None) -> str | None:
    """After a crashed deploy: if the journal's swap happened but the registry's champion is
    not the version it published, swap the previous bundle back. Returns what it did."""
    served = Path(served)
    _, _, journal = _paths(served)
    if not journal.exists():
        return None
    entry = json.loads(journal.read_text())
    done = None
    if current_target(served) == Path(entry["new"]).resolve() \
            and str(champion_version) != entry["version"] and entry["previous"]:
        swap(served, Path(entry["previous"]))
        done = (f"a deploy of version {entry['version']} died before the registry followed: "
                f"{served} serves {entry['previous']} again")
        log.warning("publish: %s", done)
    journal.unlink()
    return done


def recover_served(cfg) -> str | None:
    """``recover`` for the config's served directory, asking the registry only when a deploy
    left a journal (``marketsearch serve`` runs it before loading)."""
    served = Path(cfg.path(cfg.serving.model_dir))
    if not _paths(served)[2].exists():
        return None
    from marketsearch import registry

    champion = registry.champion(cfg)
    return recover(served, str(champion.version) if champion else None)


def prune(served: str | Path, keep: int = KEEP) -> None:
    """Delete all but the newest ``keep`` bundles under ``.bundles/`` (never the served one)."""
    bundles, _, _ = _paths(Path(served))
    live = current_target(served)
    old = sorted((p for p in bundles.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                 reverse=True)
    for path in old[keep:]:
        if live is None or path.resolve() != live:
            shutil.rmtree(path, ignore_errors=True)
