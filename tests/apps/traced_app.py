"""A traced service: ``python -m catga_zmq.node --app tests.apps.traced_app:node``.

Run as a node (``TRACED_SPANS`` set), it sets the OpenTelemetry SDK's tracer provider as
the global one, as an application does, with an exporter that appends each finished
span as one JSON line to the file ``TRACED_SPANS`` names (the SDK's own
``ReadableSpan.to_json``); ``test_tracing.py`` reads those files, and imports this module
for its types only (no provider is set in the test process). ``Hang`` makes the failover case: the first node to take one (``TRACED_ONCE``
names a file that only one process can create) never answers it, and the test SIGKILLs
that node; whichever takes it next answers at once.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from catga_zmq import Event, Node, Request


class JsonLines(SpanExporter):
    """Appends each span as one line of JSON to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                out.write(json.dumps(json.loads(span.to_json(indent=None))) + "\n")
        return SpanExportResult.SUCCESS


if "TRACED_SPANS" in os.environ:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines(os.environ["TRACED_SPANS"])))
    trace.set_tracer_provider(provider)
tracer = trace.get_tracer("tests.apps.traced_app")


class Greet(Request[str]):
    """Answers ``"hello " + name``, from inside a span of the handler's own."""

    __wire_name__ = "traced.Greet"
    name: str


class Fail(Request[str]):
    """Always fails with ``ValueError(text)``."""

    __wire_name__ = "traced.Fail"
    text: str


class Hang(Request[str]):
    """Idempotent: the first node to take one never answers (see the module's doc)."""

    __wire_name__ = "traced.Hang"
    __idempotent__ = True


class Noted(Event):
    __wire_name__ = "traced.Noted"
    text: str


node = Node(cluster="traced-app", discovery="none")


@node.handler
async def greet(req: Greet) -> str:
    with tracer.start_as_current_span("greeting"):
        return "hello " + req.name


@node.handler
async def fail(req: Fail) -> str:
    raise ValueError(req.text)


@node.handler
async def hang(req: Hang) -> str:
    try:
        fd = os.open(os.environ["TRACED_ONCE"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return node.node_id
    os.close(fd)
    print(f"hanging {node.node_id}", flush=True)
    await asyncio.sleep(3600)
    return node.node_id


@node.subscribe
async def on_noted(evt: Noted) -> None:
    print(f"noted {evt.text}", flush=True)
