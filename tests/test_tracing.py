"""OpenTelemetry spans and the W3C trace context across nodes (``catga_zmq.tracing``).

Across processes: the servers are ``python -m catga_zmq.node --app
tests.apps.traced_app:node``, which set the SDK's tracer provider as the global one and
write every span as a JSON line to a file; the client is a node in this process with a
provider of its own (``Node(tracer_provider=)``) and the SDK's in-memory exporter. In one
process: nodes on real sockets, each given a provider, for the finer points.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from _procs import Proc, child_env, python, run, stop_all
from conftest import MakeNode, wait_until
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from catga_zmq import Context, Event, HandlerError, Node, Request, StaticDiscovery
from tests.apps.traced_app import Fail, Greet, Hang, Noted

APP = "tests.apps.traced_app:node"
READY_TIMEOUT = 30.0  # s for a node process to print its ready line
SPAN_TIMEOUT = 15.0  # s for a span to be in a server's file


def memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A tracer provider of the SDK whose spans are kept in memory, finished ones at once."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def hex_id(value: int, digits: int) -> str:
    return f"0x{value:0{digits}x}"


# Across processes --------------------------------------------------------------------


class Server:
    """A traced node process and the spans it wrote."""

    def __init__(self, proc: Proc, spans: Path) -> None:
        self.proc = proc
        self.spans_file = spans

    @property
    def endpoint(self) -> str:
        return self.proc.ready["endpoint"]

    def spans(self) -> list[dict[str, Any]]:
        try:
            text = self.spans_file.read_text()
        except FileNotFoundError:
            return []
        # A line being written is not whole yet: only whole lines count.
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    async def span(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first span in its file that ``predicate`` accepts, waiting for it."""
        deadline = time.monotonic() + SPAN_TIMEOUT
        while True:
            found = [s for s in self.spans() if predicate(s)]
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise self.proc.fail(f"no such span within {SPAN_TIMEOUT} s: {self.spans()}")
            await asyncio.sleep(0.05)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """``servers("a")``: a traced node process, ready; every one is stopped by its PID."""
    started: list[Proc] = []
    cluster = f"traced-{uuid.uuid4().hex[:8]}"
    once = tmp_path / "hang-once"

    def start(node_id: str) -> Server:
        spans = tmp_path / f"{node_id}.spans.jsonl"
        cmd = python("-m", "catga_zmq.node", "--app", APP, "--id", node_id, "--cluster", cluster)
        env = child_env(TRACED_SPANS=str(spans), TRACED_ONCE=str(once))
        proc = Proc.start(node_id, cmd, tmp_path / node_id, env=env)
        started.append(proc)
        proc.wait_ready(READY_TIMEOUT)
        return Server(proc, spans)

    start.cluster = cluster  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        stop_all(started)


@pytest_asyncio.fixture
async def client_of(
    servers: Callable[[str], Server],
) -> AsyncIterator[Callable[..., Any]]:
    """``await client_of(server, ...)``: a started client node here, greeting those
    servers, tracing into an in-memory exporter; closed afterwards."""
    made: list[Node] = []

    async def make(*targets: Server) -> tuple[Node, InMemorySpanExporter]:
        provider, exporter = memory_provider()
        client = Node(
            "client",
            servers.cluster,  # type: ignore[attr-defined]
            discovery=StaticDiscovery([t.endpoint for t in targets]),
            tracer_provider=provider,
        )
        client.subscribe(_ignore_noted)
        made.append(client)
        await client.start()
        await client.wait_for_peers(len(targets), timeout=READY_TIMEOUT, handles=Greet)
        return client, exporter

    try:
        yield make
    finally:
        for node in made:
            await node.aclose()


async def _ignore_noted(evt: Noted) -> None:
    """The client subscribes too, so the servers learn the type's subscribers both ways."""


def finished(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


async def test_the_server_span_is_a_child_of_the_client_span_across_processes(
    servers: Callable[[str], Server], client_of: Callable[..., Any]
) -> None:
    a = servers("a")
    client, exporter = await client_of(a)
    assert await client.send(Greet(name="Ada"), timeout=10) == "hello Ada"

    [sent] = [s for s in finished(exporter, SpanKind.CLIENT) if s.name == "traced.Greet"]
    assert sent.context is not None
    assert sent.attributes is not None
    assert sent.attributes["rpc.system"] == "catga_zmq"
    assert sent.attributes["rpc.method"] == "traced.Greet"
    assert sent.attributes["catga_zmq.node"] == "a"
    assert sent.attributes["catga_zmq.attempts"] == 1
    assert sent.status.status_code is StatusCode.UNSET
    trace_id = hex_id(sent.context.trace_id, 32)

    served = await a.span(lambda s: s["name"] == "traced.Greet" and s["kind"] == "SpanKind.SERVER")
    assert served["context"]["trace_id"] == trace_id
    assert served["parent_id"] == hex_id(sent.context.span_id, 16)
    assert served["attributes"]["rpc.system"] == "catga_zmq"
    assert served["attributes"]["catga_zmq.source"] == "client"
    # The handler's own span nests under the server span.
    inner = await a.span(lambda s: s["name"] == "greeting")
    assert inner["context"]["trace_id"] == trace_id
    assert inner["parent_id"] == served["context"]["span_id"]
    # The handler's time there, measured there, is on the client span and in stats.
    handled = sent.attributes["catga_zmq.handler_us"]
    assert isinstance(handled, int) and handled > 0
    assert sent.end_time is not None and sent.start_time is not None
    assert handled * 1000 < sent.end_time - sent.start_time
    stats = client.stats()
    assert stats.remote_handled >= 1 and stats.remote_handler_us >= handled


async def test_a_failing_handler_sets_error_status_on_both_sides(
    servers: Callable[[str], Server], client_of: Callable[..., Any]
) -> None:
    a = servers("a")
    client, exporter = await client_of(a)
    with pytest.raises(HandlerError, match="no luck"):
        await client.send(Fail(text="no luck"), timeout=10)

    [sent] = [s for s in finished(exporter, SpanKind.CLIENT) if s.name == "traced.Fail"]
    assert sent.status.status_code is StatusCode.ERROR
    assert sent.attributes is not None and sent.context is not None
    assert sent.attributes["error.type"] == "HANDLER_FAILED"
    served = await a.span(lambda s: s["name"] == "traced.Fail")
    assert served["kind"] == "SpanKind.SERVER"
    assert served["parent_id"] == hex_id(sent.context.span_id, 16)
    assert served["status"]["status_code"] == "ERROR"
    assert served["status"]["description"] == "no luck"
    assert served["attributes"]["error.type"] == "ValueError"
    assert [e["name"] for e in served["events"]] == ["exception"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL")
async def test_a_request_that_failed_over_shows_both_attempts_in_one_client_span(
    servers: Callable[[str], Server], client_of: Callable[..., Any]
) -> None:
    a, b = servers("a"), servers("b")
    client, exporter = await client_of(a, b)
    sent = asyncio.ensure_future(client.send(Hang(), timeout=30))
    # Whichever node took it first hangs: kill it, and the other one answers.
    hung = await _first_line(sent, {"a": a, "b": b}, "hanging")
    hung.proc.send_signal(signal.SIGKILL)
    async with asyncio.timeout(30):
        answered_by = await sent
    assert answered_by != hung.proc.name

    [span] = [s for s in finished(exporter, SpanKind.CLIENT) if s.name == "traced.Hang"]
    assert span.attributes is not None
    assert span.attributes["catga_zmq.attempts"] == 2
    attempts = [e for e in span.events if e.name == "attempt"]
    assert [(e.attributes or {}).get("catga_zmq.node") for e in attempts] == [
        hung.proc.name,
        answered_by,
    ]
    [failover] = [e for e in span.events if e.name == "failover"]
    assert (failover.attributes or {})["error.type"] == "TRANSPORT_FAILED"
    assert span.status.status_code is StatusCode.UNSET
    # The node that answered served it as a child of the same client span.
    other = a if answered_by == "a" else b
    assert span.context is not None
    served = await other.span(lambda s: s["name"] == "traced.Hang")
    assert served["parent_id"] == hex_id(span.context.span_id, 16)


async def _first_line(sent: asyncio.Future[Any], by: dict[str, Server], text: str) -> Server:
    deadline = time.monotonic() + SPAN_TIMEOUT
    while True:
        for server in by.values():
            if text in server.proc.stdout():
                return server
        if sent.done() or time.monotonic() >= deadline:
            raise AssertionError(f"no node printed {text!r}; the send: {sent}")
        await asyncio.sleep(0.05)


async def test_publish_is_a_producer_span_and_handling_a_consumer_span_across_processes(
    servers: Callable[[str], Server], client_of: Callable[..., Any]
) -> None:
    a = servers("a")
    client, exporter = await client_of(a)
    # The server subscribes once it has heard the client: publish until it takes one.
    for n in range(200):
        await client.publish(Noted(text=f"n{n}"))
        if "noted" in a.proc.stdout():
            break
        await asyncio.sleep(0.05)
    line = next(x for x in a.proc.stdout().splitlines() if x.startswith("noted"))
    text = line.split()[1]
    consumed = await a.span(lambda s: s["name"] == "process traced.Noted")
    assert consumed["kind"] == "SpanKind.CONSUMER"
    assert consumed["attributes"]["messaging.system"] == "catga_zmq"
    assert consumed["attributes"]["messaging.destination.name"] == "traced.Noted"
    produced = {
        hex_id(s.context.span_id, 16): s
        for s in finished(exporter, SpanKind.PRODUCER)
        if s.context is not None
    }
    parent = produced[consumed["parent_id"]]
    assert parent.name == "publish traced.Noted"
    assert parent.context is not None
    assert consumed["context"]["trace_id"] == hex_id(parent.context.trace_id, 32)
    assert text.startswith("n")


# In one process ----------------------------------------------------------------------


class Ask(Request[str]):
    """Answers the trace id its handler saw."""

    __wire_name__ = "tracing.Ask"


class Told(Event):
    __wire_name__ = "tracing.Told"


async def test_a_node_without_a_provider_makes_no_spans(make_node: MakeNode) -> None:
    # No global provider in this process, none given: no tracing, whatever is imported.
    server, caller = make_node("srv"), make_node("cli")

    @server.handler
    async def ask(req: Ask, ctx: Context) -> str:
        return ctx.trace_id

    await server.start()
    await caller.start()
    await caller.wait_for_peers(1, handles=Ask)
    assert caller._parts is not None and caller._parts.requester.spans is None
    assert await caller.send(Ask(), timeout=5) == ""
    assert any("tracing" in t.get_name() for t in caller._supervisor.tasks)


#: A node started before the application sets its global tracer provider: no spans,
#: then, once the provider is set, the node's spans within its look-again interval.
_LATE_PROVIDER = """
import asyncio, time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from catga_zmq import Node, Request

class Ask(Request[str]):
    __wire_name__ = "late.Ask"

async def main():
    node = Node("solo", discovery=None)

    @node.handler
    async def ask(req: Ask) -> str:
        return "here"

    async with node:
        assert await node.send(Ask(), timeout=5) == "here"
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        assert exporter.get_finished_spans() == ()
        trace.set_tracer_provider(provider)
        set_at = time.monotonic()
        async with asyncio.timeout(20):
            while node._parts.requester.spans is None:
                await asyncio.sleep(0.02)
        took = time.monotonic() - set_at
        assert await node.send(Ask(), timeout=5) == "here"
    kinds = sorted(str(s.kind) for s in exporter.get_finished_spans())
    print(f"{kinds} {took:.2f}")

asyncio.run(main())
"""


def test_a_provider_set_after_the_start_is_taken_up() -> None:
    done = run(python("-W", "error", "-c", _LATE_PROVIDER), timeout=60)
    assert done.returncode == 0, done.stderr
    kinds, took = done.stdout.rsplit(" ", 1)
    assert kinds == "['SpanKind.CLIENT', 'SpanKind.SERVER']"
    # Within the look-again interval (1 s), with room for a loaded machine.
    assert float(took) < 10.0


async def test_in_process_spans_nest_and_carry_the_trace_id(make_node: MakeNode) -> None:
    provider, exporter = memory_provider()
    server = make_node("srv", tracer_provider=provider)
    caller = make_node("cli", tracer_provider=provider)
    got: list[str] = []

    @server.handler
    async def ask(req: Ask, ctx: Context) -> str:
        return ctx.trace_id

    @server.subscribe
    async def told(evt: Told, ctx: Context) -> None:
        got.append(ctx.trace_id)

    await server.start()
    await caller.start()
    await caller.wait_for_peers(1, handles=Ask)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        seen = await caller.send(Ask(), timeout=5)
        # The caller's own id goes through unchanged.
        assert await caller.send(Ask(), timeout=5, trace_id="mine") == "mine"
    trace_id = f"{outer.get_span_context().trace_id:032x}"
    assert seen == trace_id  # the caller gave none: the span's
    clients = finished(exporter, SpanKind.CLIENT)
    servers_ = finished(exporter, SpanKind.SERVER)
    assert len(clients) == 2 and len(servers_) == 2
    for client_span in clients:
        assert client_span.parent is not None
        assert client_span.parent.span_id == outer.get_span_context().span_id
    assert {s.parent.span_id for s in servers_ if s.parent} == {
        c.context.span_id for c in clients if c.context
    }
    # Events: a local subscriber and a remote one, each a CONSUMER under the PRODUCER.
    await wait_until(lambda: caller._parts is not None and server.members() != [])
    with tracer.start_as_current_span("publishing"):
        await server.publish(Told())
    await wait_until(lambda: len(got) >= 1)
    [produced] = finished(exporter, SpanKind.PRODUCER)
    [consumed] = finished(exporter, SpanKind.CONSUMER)
    assert produced.context is not None and consumed.parent is not None
    assert consumed.parent.span_id == produced.context.span_id
    assert got == [f"{produced.context.trace_id:032x}"]


async def test_a_local_call_is_a_server_span_under_the_client_span(make_node: MakeNode) -> None:
    provider, exporter = memory_provider()
    node = make_node("solo", tracer_provider=provider)

    @node.handler
    async def ask(req: Ask) -> str:
        return "here"

    await node.start()
    assert await node.send(Ask(), node="solo", timeout=5) == "here"
    [client_span] = finished(exporter, SpanKind.CLIENT)
    [server_span] = finished(exporter, SpanKind.SERVER)
    assert client_span.context is not None and server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id


async def test_builtin_requests_get_no_server_span(make_node: MakeNode) -> None:
    from catga_zmq import Ping

    provider, exporter = memory_provider()
    a, b = make_node("a", tracer_provider=provider), make_node("b", tracer_provider=provider)
    await a.start()
    await b.start()
    await b.wait_for_peers(1)
    await b.send(Ping(), node="a", timeout=5)
    assert [s.name for s in finished(exporter, SpanKind.CLIENT)] == ["catga.Ping"]
    assert finished(exporter, SpanKind.SERVER) == []


async def test_the_tracing_setting_off_makes_no_spans(make_node: MakeNode) -> None:
    provider, exporter = memory_provider()
    node = make_node("solo", tracer_provider=provider, tracing=False)

    @node.handler
    async def ask(req: Ask) -> str:
        return "here"

    await node.start()
    assert await node.send(Ask(), node="solo", timeout=5) == "here"
    assert exporter.get_finished_spans() == ()


async def test_a_timeout_sets_the_client_span_error(make_node: MakeNode) -> None:
    provider, exporter = memory_provider()
    server = make_node("srv", tracer_provider=provider)
    caller = make_node("cli", tracer_provider=provider)

    @server.handler
    async def ask(req: Ask) -> str:
        await asyncio.sleep(10)
        return ""

    await server.start()
    await caller.start()
    await caller.wait_for_peers(1, handles=Ask)
    with pytest.raises(TimeoutError):
        await caller.send(Ask(), timeout=0.3)
    [client_span] = finished(exporter, SpanKind.CLIENT)
    assert client_span.status.status_code is StatusCode.ERROR
    assert (client_span.attributes or {})["error.type"] == "TIMEOUT"
    await wait_until(lambda: len(finished(exporter, SpanKind.SERVER)) == 1)
    [server_span] = finished(exporter, SpanKind.SERVER)
    assert (server_span.attributes or {})["error.type"] == "TIMEOUT"


_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("traceparent", "tracestate"),
    [
        (_PARENT, ""),
        (_PARENT, "vendor=a,other=b"),
        (_PARENT.replace("-01", "-00"), ""),  # not sampled
        ("00-" + "0" * 32 + "-b7ad6b7169203331-01", ""),  # all-zero trace id
        ("00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01", ""),  # all-zero span
        ("ff" + _PARENT[2:], ""),  # version ff is invalid
        (_PARENT + "-extra", ""),  # version 00 has four fields
        ("01" + _PARENT[2:] + "-extra", ""),  # a later version may have more
        (_PARENT.upper(), ""),  # hex is lower case
        ("garbage", ""),
        ("", ""),
    ],
)
def test_a_traceparent_is_read_as_the_w3c_propagator_reads_it(
    traceparent: str, tracestate: str
) -> None:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from catga_zmq.tracing import Spans

    spans = Spans("n", memory_provider()[0])
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    expected = trace.get_current_span(TraceContextTextMapPropagator().extract(carrier))
    got = trace.get_current_span(spans.parent(traceparent, tracestate))
    assert got.get_span_context() == expected.get_span_context()
    if tracestate:
        assert got.get_span_context().trace_state.to_header() == tracestate
