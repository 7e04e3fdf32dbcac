"""Discovery backends. Optional ones (mdns needs zeroconf) are imported when chosen."""

from __future__ import annotations

from .base import Candidate, ChangeKind, Discovery, DiscoveryChange
from .memory import MemoryDiscovery, MemoryHub
from .static import StaticDiscovery

__all__ = [
    "Candidate",
    "ChangeKind",
    "Discovery",
    "DiscoveryChange",
    "MemoryDiscovery",
    "MemoryHub",
    "StaticDiscovery",
]
