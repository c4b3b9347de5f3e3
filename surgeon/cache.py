"""Caches that cannot go stale or silently wrong: an entry is found by what it was made from
(a file's contents, a package's version, a model's weights), checked before it is used (each
file's size and sha256, recorded in a manifest when the entry was made), and written to a
temporary name first and renamed into place, so a crash never leaves half an entry. A damaged
entry is rebuilt with one log line. Entries live under `assets.cache_dir` ($SURGEON_CACHE).
An entry is checked and built under its lock (`building`), so parallel jobs build it once."""
import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "surgeon-manifest.json"


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest(data) -> str:
    """A short stable digest of JSON-able data (cache keys)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stamp(path: Path) -> dict:
    """What a source file is: size, modification time and contents."""
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_digest(path)}


def unchanged(recorded: dict, path: Path) -> bool:
    """Whether `path` still holds what `stamp` recorded (its contents are hashed again only when
    its size or time moved)."""
    if not path.exists():
        return False
    st = path.stat()
    if st.st_size != recorded["size"]:
        return False
    return st.st_mtime_ns == recorded["mtime_ns"] or file_digest(path) == recorded["sha256"]


def write_manifest(folder: Path, source: dict) -> dict:
    files = {p.name: {"size": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"source": source, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def damage(folder: Path) -> str | None:
    """Why the entry in `folder` cannot be used (None: it is whole), checking every file."""
    path = folder / MANIFEST
    if not path.exists():
        return "no manifest (made by an older version, or never finished)"
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        return "unreadable manifest"
    for name, want in manifest["files"].items():
        f = folder / name
        if not f.exists():
            return f"{name} is missing"
        if f.stat().st_size != want["size"]:
            return f"{name} is {f.stat().st_size} bytes, not {want['size']} (truncated?)"
        if file_digest(f) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


@contextlib.contextmanager
def building(entry: Path):
    """Hold `entry`'s lock while checking or building it. Parallel sweep jobs that find no entry
    would otherwise each build it, and a later builder's discard would delete the folder that an
    earlier one is already reading; with the lock the first builds and the others wait, then find
    it whole. (flock: released when the process dies, so a crashed builder blocks no one.)"""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def discard(folder: Path, reason: str) -> None:
    log.warning("cache %s: %s; rebuilding it", folder, reason)
    shutil.rmtree(folder, ignore_errors=True)
