"""Settings that may change while a node runs: which, how a change is checked, and
how it is applied (``Configure``, ``python -m catga_zmq set NODE weight=3``).

A setting is here only if every part that uses it reads it at each use, so that a new
value takes effect at once and whole: ``weight`` and ``metadata`` (in the next
heartbeat, so in every member's ``members()``, and in ``Info``), ``max_concurrency``
(the next request), ``request_timeout`` (the next ``send()`` without a timeout),
``drain_timeout`` (the next drain) and ``log_level`` (the process's root logger, which
the node command sets from it when it starts). Not here: what sockets, discovery or
the failure detectors were built with (ports, the cluster, keys, timings, bounds on
queues), which only a restart changes.

A change is checked as the setting's flag would be, every value before any is applied:
one bad value or unknown key changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from .config import NodeOptions, Setting, options_from_mapping, options_from_text, settings
from .errors import ConfigError
from .membership import Peer
from .system import RuntimeSettings

log = logging.getLogger("catga_zmq.node")

#: The settings ``Configure`` may change, in the order ``--help`` shows them.
RUNTIME_SETTINGS: Final = (
    "weight",
    "metadata",
    "max_concurrency",
    "request_timeout",
    "drain_timeout",
    "log_level",
)
#: ``metadata.KEY=VALUE`` sets one label and leaves the others.
LABEL_PREFIX: Final = "metadata."


def settable() -> str:
    """The keys ``Configure`` takes, for an error to list."""
    return ", ".join(["weight", "metadata", "metadata.KEY", *RUNTIME_SETTINGS[2:]])


@dataclass(frozen=True, slots=True)
class Changes:
    """A checked change: settings with their new typed values (``metadata``: the whole
    table), and labels to set on top of the metadata (``metadata.zone``)."""

    values: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        """What the change names, sorted: ``["metadata.zone", "weight"]``."""
        return sorted([*self.values, *(LABEL_PREFIX + k for k in self.labels)])


def _label(s: Setting) -> str:
    return f"{s.name}="


def parse_changes(texts: Mapping[str, str]) -> Changes:
    """``{"weight": "3", "metadata.zone": "b"}`` checked one by one, as flags are;
    ``ConfigError`` naming the first key or value that is wrong and what it takes.

    What depends on the node (whether its heartbeats still fit its
    ``max_message_size``) is checked by ``apply``.
    """
    if not texts:
        raise ConfigError(f"no setting given; the settings that can change: {settable()}")
    by_name = {s.name: s for s in settings()}
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for key, text in texts.items():
        if key.startswith(LABEL_PREFIX):
            labels[key.removeprefix(LABEL_PREFIX)] = text
            continue
        if key not in RUNTIME_SETTINGS:
            if key in by_name:
                why = f"{key} cannot change while a node runs (restart the node with it)"
            else:
                why = f"unknown setting {key!r}"
            raise ConfigError(f"{why}; the settings that can change: {settable()}")
        try:
            values.update(options_from_text({key: [text]}, label=_label))
        except ConfigError as exc:
            raise ConfigError(_with_range(exc.message, by_name[key])) from None
    for label, text in labels.items():
        try:
            options_from_mapping({"metadata": {label: text}}, source="")
        except ConfigError:
            raise ConfigError(
                f"{LABEL_PREFIX}{label}={text[:80]!r} is not allowed; metadata takes "
                f"{by_name['metadata'].allowed}"
            ) from None
    return Changes(values, labels)


def _with_range(message: str, s: Setting) -> str:
    """``message``, with what the setting takes if it does not say so already."""
    takes = s.range or s.allowed or (", ".join(s.choices) if s.choices else "")
    return message if not takes or takes in message else f"{message}; {s.name} takes {takes}"


def apply(changes: Changes, options: NodeOptions, me: Peer) -> None:
    """Check ``changes`` against the node's settings as a whole, then apply them.

    ``options`` is the node's own ``NodeOptions``, which its parts share and read at
    each use: it is changed in place. ``me`` is the node's own member record, which
    its heartbeats carry. ``ConfigError`` (nothing changed) when the whole does not
    hold, such as metadata that would make heartbeats too large.
    """
    values = dict(changes.values)
    if changes.labels:
        table = dict(values.get("metadata", options.metadata))
        table.update(changes.labels)
        values["metadata"] = table
    checked = options.merged(values).validated()
    for name in values:
        setattr(options, name, getattr(checked, name))
    if "weight" in values:
        me.weight = options.weight
    if "metadata" in values:
        me.metadata = dict(options.metadata)
    if "log_level" in values:
        logging.getLogger().setLevel(options.log_level.upper())


def current(options: NodeOptions, changed: list[str]) -> RuntimeSettings:
    """The runtime settings of ``options`` now, as ``Configure`` answers them."""
    found = {name: getattr(options, name) for name in RUNTIME_SETTINGS}
    found["metadata"] = dict(found["metadata"])
    return msgspec.convert(
        {"node_id": options.node_id, "changed": changed, **found}, RuntimeSettings
    )
