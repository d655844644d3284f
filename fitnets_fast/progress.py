"""Progress display of a run: tqdm bars on a terminal, one plain line per epoch otherwise.

The choice is made here, once, from the stream the progress goes to (stderr): when it is a file or a
pipe, cursor-moving bars would fill the log with escape codes, so :func:`progress_bar` returns a
:class:`PlainProgress` instead. Both take the same arguments and calls as the part of tqdm the trainer uses.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional

from tqdm.auto import tqdm

__all__ = ["progress_bar", "PlainProgress"]


class PlainProgress:
    """A tqdm stand-in that prints one line per step: ``<desc> <n>/<total> key=value ...``.

    A step's line is printed at its ``set_postfix`` (or at the next ``update`` / ``close`` when none
    comes). Bars with ``leave=False`` (transient ones, e.g. the batches of one epoch) print nothing.
    """

    def __init__(self, total: int, desc: str = "", initial: int = 0, leave: bool = True, disable: bool = False):
        self.total, self.desc, self.n = total, desc, initial
        self.silent = disable or not leave
        self._pending = False

    def _emit(self, postfix: Dict[str, Any]) -> None:
        if self._pending:
            items = "".join(f" {k}={v}" for k, v in postfix.items())
            print(f"{self.desc} {self.n}/{self.total}{items}", file=sys.stderr, flush=True)
            self._pending = False

    def update(self, n: int = 1) -> None:
        self._emit({})
        self.n += n
        self._pending = not self.silent

    def set_postfix(self, ordered_dict: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        self._emit({**(ordered_dict or {}), **kwargs})

    def close(self) -> None:
        self._emit({})


def progress_bar(total: int, desc: str = "", initial: int = 0, leave: bool = True, disable: bool = False):
    """A tqdm bar when stderr is a terminal, else a :class:`PlainProgress` (same arguments)."""
    if disable or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, initial=initial, leave=leave, disable=disable)
    return PlainProgress(total, desc=desc, initial=initial, leave=leave)
