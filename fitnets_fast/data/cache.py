"""On-disk cache of fitted transforms and preprocessed arrays, keyed by a hash of the data's content.

An entry is one ``torch.save`` file of a dict of tensors, ``<kind>-<key>.pt`` in the cache folder, written to a
temporary name and renamed, so a crash never leaves a half-written entry under the real name. An entry that
cannot be read is reported with a warning and treated as absent (it is then recomputed and rewritten).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from typing import Dict, Optional

import torch

#: Environment variable naming the default cache folder.
CACHE_ENV = "FITNETS_FAST_CACHE"


def default_dir() -> str:
    """``$FITNETS_FAST_CACHE``, else ``$XDG_CACHE_HOME/fitnets_fast``, else ``~/.cache/fitnets_fast``."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fitnets_fast")


def content_hash(*parts) -> str:
    """Hex SHA-256 over ``parts``: tensors contribute dtype, shape and bytes; anything else its ``repr``."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().to("cpu").contiguous()
            h.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).reshape(-1).numpy() if t.numel() else b"")
        else:
            h.update(f"{p!r};".encode())
    return h.hexdigest()


def _path(folder: str, kind: str, key: str) -> str:
    return os.path.join(folder, f"{kind}-{key[:32]}.pt")


def load(folder: Optional[str], kind: str, key: str) -> Optional[Dict[str, torch.Tensor]]:
    """The entry ``kind``/``key`` from ``folder``, or None when absent, unreadable or ``folder`` is None."""
    if folder is None:
        return None
    path = _path(folder, kind, key)
    if not os.path.isfile(path):
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable entry is recomputed rather than trusted
        warnings.warn(f"ignoring unreadable cache entry {path} ({type(exc).__name__}: {exc}); recomputing")
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        warnings.warn(f"ignoring cache entry {path}: it does not hold {kind} {key[:12]}; recomputing")
        return None
    return entry


def save(folder: Optional[str], kind: str, key: str, tensors: Dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` as entry ``kind``/``key`` (atomically). A folder that cannot be written only warns."""
    if folder is None:
        return
    path = _path(folder, kind, key)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{kind}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"key": key, **tensors}, f)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache entry is as readable as the data
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        warnings.warn(f"could not write cache entry {path} ({exc}); continuing without caching it")
