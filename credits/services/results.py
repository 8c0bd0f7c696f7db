"""Results the ledger's sweeps share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnitFailure:
    """One unit of a sweep (`user:<id>`, `hold:<uuid>`) that failed; the sweep went on."""

    unit: str
    error: str
