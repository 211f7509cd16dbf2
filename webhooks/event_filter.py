"""An endpoint's event type filter: exact types from the catalogue, or `prefix.*` (every type under a prefix)."""

from __future__ import annotations

from models.event_catalogue import CATALOGUE

MAX_FILTERS = 100


def known_types() -> set[str]:
    return {event_type for event_type, _ in CATALOGUE}


def invalid_filters(filters: list[str]) -> list[str]:
    """The entries that name no catalogued type (an exact type, or `x.*` where some type starts with `x.`)."""
    types = known_types()
    bad = []
    for entry in filters:
        if entry.endswith(".*"):
            prefix = entry[:-1]
            if not prefix[:-1] or not any(t.startswith(prefix) for t in types):
                bad.append(entry)
        elif entry not in types:
            bad.append(entry)
    return bad


def matches(filters: list[str] | None, event_type: str) -> bool:
    """None (no filter) matches every type."""
    if filters is None:
        return True
    return any(event_type.startswith(f[:-1]) if f.endswith(".*") else event_type == f for f in filters)
