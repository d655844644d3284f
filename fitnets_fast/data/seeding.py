"""Deterministic seeds derived from several values (e.g. a run seed and an epoch number)."""
from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit seed that depends only on ``parts`` (their ``repr``s), well mixed: (1, 2) and (2, 1) differ,
    and consecutive inputs give unrelated seeds. For ``torch.Generator.manual_seed``."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
