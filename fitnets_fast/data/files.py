"""Finding a data set's files on disk and reporting missing or damaged ones.

Every loader resolves its folder with :func:`locate` and wraps any failure to parse a file in
:class:`CorruptFileError`, so a user always learns which file is at fault and what layout was expected.
Nothing here downloads anything.
"""
from __future__ import annotations

import os
import pickle
from typing import Iterable, Optional, Sequence

#: Environment variable naming the default data folder (used when ``root`` is None).
DATA_ENV = "FITNETS_FAST_DATA"


class CorruptFileError(ValueError):
    """A data file exists but is truncated, corrupt or not in the expected format. ``path`` names it."""

    def __init__(self, path: str, problem: str, expected: str):
        self.path = path
        super().__init__(f"{path}: {problem}. Expected {expected}. Re-create this file from the original "
                         f"release (the loader never downloads).")


def default_root() -> str:
    """The data folder used when ``root`` is None: ``$FITNETS_FAST_DATA`` if set, else ``./data``."""
    return os.environ.get(DATA_ENV) or "data"


def locate(root: Optional[str], subfolders: Sequence[str], required: Iterable[str], layout: str) -> str:
    """Return the folder holding every file of one required alternative group.

    ``root`` may be the data set's own folder or any parent listed in ``subfolders`` (relative paths tried
    in order after ``root`` itself). ``required`` holds groups of alternatives: each entry is a tuple of
    file names of which one must exist (e.g. ``("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")``).
    A folder qualifies only when every group has a file there (no silent partial data set).

    Raises FileNotFoundError naming the folders searched, the files missing from the closest candidate and
    the ``layout`` expected.
    """
    base = os.path.expanduser(default_root() if root is None else os.fspath(root))
    groups = [tuple(g) if isinstance(g, (tuple, list)) else (g,) for g in required]
    candidates = [base] + [os.path.join(base, s) for s in subfolders]
    best, best_missing = None, None
    for folder in candidates:
        if not os.path.isdir(folder):
            continue
        missing = [g for g in groups if not any(os.path.isfile(os.path.join(folder, f)) for f in g)]
        if not missing:
            return folder
        if best_missing is None or len(missing) < len(best_missing):
            best, best_missing = folder, missing
    how = "" if root is not None else f" (root=None: the default from ${DATA_ENV} or ./data)"
    searched = ", ".join(candidates)
    if best is None:
        detail = "none of these folders exists"
    else:
        names = "; ".join(" or ".join(g) for g in best_missing)
        detail = f"{best} lacks {names}"
    raise FileNotFoundError(f"data set not found under {base!r}{how}: {detail}. Searched: {searched}. "
                            f"Expected layout: {layout}")


def resolve(folder: str, alternatives: Sequence[str]) -> str:
    """Path of the first existing file among ``alternatives`` inside ``folder`` (one :func:`locate` found)."""
    for name in alternatives:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"none of {', '.join(alternatives)} exists in {folder}")


class _DataUnpickler(pickle.Unpickler):
    """Unpickler that only builds plain containers and numpy arrays: a data file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
        ("_codecs", "encode"), ("builtins", "bytearray"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays and plain "
                                     f"containers are allowed in a data file)")


def read_pickle(path: str, expected: str) -> dict:
    """Load a pickled dict (Python 2 or 3 pickle) and return it with every ``bytes`` key decoded to ``str``.

    Python 2 pickles are read with ``encoding="latin1"``; dicts written with ``bytes`` keys (as the original
    CIFAR release reads with ``encoding="bytes"``) are normalised too. Raises CorruptFileError on a truncated
    or corrupt file, or when the content is not a dict.
    """
    try:
        with open(path, "rb") as f:
            obj = _DataUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, UnicodeDecodeError, OverflowError) as exc:   # damaged frames raise any of these
        raise CorruptFileError(path, f"cannot unpickle ({type(exc).__name__}: {exc})", expected) from exc
    if not isinstance(obj, dict):
        raise CorruptFileError(path, f"holds a {type(obj).__name__}, not a dict", expected)
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def text(value) -> str:
    """A class name stored as ``str`` or ``bytes`` (both occur in pickles), as ``str``."""
    return value.decode("latin1") if isinstance(value, bytes) else str(value)
