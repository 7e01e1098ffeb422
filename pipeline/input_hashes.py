"""Content hashes of a recipe's input files, cached by (path, size, mtime_ns).

The recipe hash covers what the inputs hold, not only their names and sizes: an input edited in
place with the same size must not resume stale partitions. Hashing a multi-GB TSV on every run
would be slow, so each digest is kept in a small JSON cache and reused while the file's size and
mtime (nanoseconds) are unchanged. A write that keeps both (e.g. `touch -d` back to the old time)
is not seen; a normal edit always moves the mtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

CACHE_ENV = "JANUS_FORGE_HASH_CACHE"  # where the cache file lives; default ~/.cache/janus-forge/
log = logging.getLogger("janus_forge.input_hashes")


def cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "janus-forge" / "input-hashes.json"


def _read_cache(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: every file is hashed again, nothing is wrong


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def content_hashes(paths: Sequence[Path]) -> list[str]:
    """One digest per path, in order; unchanged files come from the cache.

    A directory input (an imagefolder class) digests its files' relative paths and digests.
    """
    from pipeline.workdir import write_atomic

    cache_file = cache_path()
    cache = _read_cache(cache_file)
    changed = False

    def one_file(p: Path) -> str:
        nonlocal changed
        st = p.stat()
        key = str(p.resolve())
        entry = cache.get(key)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return entry[2]
        digest = file_digest(p)
        cache[key] = [st.st_size, st.st_mtime_ns, digest]
        changed = True
        return digest

    def one_path(p: Path) -> str:
        if not p.is_dir():
            return one_file(p)
        listing = hashlib.blake2b(digest_size=16)
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            listing.update(f"{f.relative_to(p).as_posix()}\0{one_file(f)}\n".encode())
        return listing.hexdigest()

    out = [one_path(p) for p in paths]
    if changed:
        try:
            write_atomic(cache_file, json.dumps(cache, sort_keys=True).encode())
        except OSError as err:  # a read-only home: hashes are still right, only slower next time
            log.warning("input hash cache %s not written: %s", cache_file, err)
    return out
