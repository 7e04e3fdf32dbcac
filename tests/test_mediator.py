"""Local dispatch: handler registration, the behaviour pipeline, subscribers."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from catga_zmq import ConfigError, Context, DeadlineBehavior, Event, Request, RequestTimeout
from catga_zmq import mediator as mediator_module
from catga_zmq.mediator import Mediator, Next
from catga_zmq.messages import Message


class Answer(msgspec.Struct):
    value: int


class Ask(Request[Answer]):
    value: int


class AskOther(Request[Answer]):
    value: int


class Happened(Event):
    n: int


def _ctx(deadline: float = 0.0) -> Context:
    return Context("test.Ask", node_id="me", source="caller", request_id=1, deadline=deadline)


# registration ----------------------------------------------------------------------------


def test_handler_type_from_annotation() -> None:
    m = Mediator("me")

    async def handle(req: Ask) -> Answer:
        return Answer(req.value)

    m.add_handler(handle)
    entry = m.handlers[Ask.__wire_name__]
    assert entry.message_type is Ask
    assert entry.response_type is Answer
    assert entry.is_async and not entry.wants_context


def test_handler_with_context_and_sync() -> None:
    m = Mediator("me")

    def handle(req: AskOther, ctx: Context) -> Answer:
        return Answer(req.value)

    m.add_handler(handle)
    entry = m.handlers[AskOther.__wire_name__]
    assert entry.wants_context and not entry.is_async


def test_explicit_type_needs_no_annotation() -> None:
    m = Mediator("me")
    m.add_handler(lambda req: Answer(1), Ask)
    assert m.handlers[Ask.__wire_name__].message_type is Ask


def test_missing_annotation_raises() -> None:
    m = Mediator("me")

    async def handle(req):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(ConfigError, match="annotate its first parameter"):
        m.add_handler(handle)
    assert not m.handlers


@pytest.mark.parametrize("annotation", [int, Happened, Answer, str], ids=lambda t: t.__name__)
def test_non_request_annotation_raises(annotation: type) -> None:
    m = Mediator("me")

    async def handle(req: Any) -> None:
        return None

    handle.__annotations__["req"] = annotation
    with pytest.raises(ConfigError, match="not a subclass of Request"):
        m.add_handler(handle)


def test_subscriber_must_take_an_event() -> None:
    m = Mediator("me")

    async def on_ask(evt: Ask) -> None:
        return None

    with pytest.raises(ConfigError, match="not a subclass of Event"):
        m.add_subscriber(on_ask)


@pytest.mark.parametrize("arity", [0, 3])
def test_wrong_number_of_parameters_raises(arity: int) -> None:
    m = Mediator("me")
    fn = {0: lambda: None, 3: lambda a, b, c: None}[arity]
    with pytest.raises(ConfigError, match=f"it takes {arity} parameters"):
        m.add_handler(fn, Ask)


def test_unresolvable_annotation_raises() -> None:
    m = Mediator("me")

    async def handle(req: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    with pytest.raises(ConfigError, match="cannot read the annotations"):
        m.add_handler(handle)


def test_not_callable_raises() -> None:
    with pytest.raises(ConfigError, match="not callable"):
        Mediator("me").add_handler(42, Ask)  # type: ignore[arg-type]


def test_second_handler_for_the_same_type_raises() -> None:
    m = Mediator("me")

    async def first(req: Ask) -> Answer:
        return Answer(1)

    async def second(req: Ask) -> Answer:
        return Answer(2)

    m.add_handler(first)
    with pytest.raises(ConfigError, match="already has a handler") as info:
        m.add_handler(second)
    assert "first" in info.value.message  # names the handler already there
    assert m.handlers[Ask.__wire_name__].fn is first


def test_same_handler_twice_is_allowed() -> None:
    m = Mediator("me")

    async def handle(req: Ask) -> Answer:
        return Answer(1)

    m.add_handler(handle)
    m.add_handler(handle)
    assert m.handlers[Ask.__wire_name__].fn is handle


# behaviours ------------------------------------------------------------------------------


class Recorder:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    async def __call__(self, message: Message, ctx: Context, call_next: Next) -> Any:
        self.calls.append(f"{self.name}:before")
        result = await call_next()
        self.calls.append(f"{self.name}:after")
        return result


async def test_behaviors_run_in_order_around_the_handler() -> None:
    m = Mediator("me")
    calls: list[str] = []

    async def handle(req: Ask, ctx: Context) -> Answer:
        calls.append(f"handler:{req.value}:{ctx.source}")
        return Answer(req.value * 2)

    m.add_behavior(Recorder("a", calls))
    m.add_handler(handle)  # added between behaviours: the chain is recomposed
    m.add_behavior(Recorder("b", calls))
    result = await m.handlers[Ask.__wire_name__].call(Ask(21), _ctx())
    assert result == Answer(42)
    assert calls == ["a:before", "b:before", "handler:21:caller", "b:after", "a:after"]


async def test_behavior_can_short_circuit_and_replace_the_result() -> None:
    m = Mediator("me")
    ran: list[int] = []

    async def handle(req: Ask) -> Answer:
        ran.append(req.value)
        return Answer(0)

    async def cached(message: Message, ctx: Context, call_next: Next) -> Any:
        return Answer(99)

    m.add_handler(handle)
    m.add_behavior(cached)
    assert await m.handlers[Ask.__wire_name__].call(Ask(1), _ctx()) == Answer(99)
    assert ran == []


async def test_behavior_sees_handler_exception() -> None:
    m = Mediator("me")
    seen: list[BaseException] = []

    async def handle(req: Ask) -> Answer:
        raise KeyError("missing")

    async def watch(message: Message, ctx: Context, call_next: Next) -> Any:
        try:
            return await call_next()
        except Exception as exc:
            seen.append(exc)
            raise

    m.add_handler(handle)
    m.add_behavior(watch)
    with pytest.raises(KeyError):
        await m.handlers[Ask.__wire_name__].call(Ask(1), _ctx())
    assert len(seen) == 1 and isinstance(seen[0], KeyError)


async def test_deadline_behavior_refuses_expired_work() -> None:
    m = Mediator("me")
    ran: list[int] = []

    async def handle(req: Ask) -> Answer:
        ran.append(req.value)
        return Answer(req.value)

    m.add_handler(handle)
    now = asyncio.get_running_loop().time()
    with pytest.raises(RequestTimeout, match="arrived after its deadline") as info:
        await m.handlers[Ask.__wire_name__].call(Ask(1), _ctx(deadline=now - 0.001))
    assert info.value.node == "me"
    assert info.value.retryable
    assert ran == []
    # A deadline in the future, or none, lets the work start.
    assert await m.handlers[Ask.__wire_name__].call(Ask(2), _ctx(deadline=now + 10)) == Answer(2)
    assert await m.handlers[Ask.__wire_name__].call(Ask(3), _ctx()) == Answer(3)
    assert ran == [2, 3]


async def test_deadline_behavior_alone() -> None:
    async def nxt() -> str:
        return "ran"

    loop = asyncio.get_running_loop()
    with pytest.raises(RequestTimeout):
        await DeadlineBehavior()(Ask(1), _ctx(deadline=loop.time()), nxt)
    assert await DeadlineBehavior()(Ask(1), _ctx(deadline=loop.time() + 5), nxt) == "ran"


async def test_context_remaining() -> None:
    loop = asyncio.get_running_loop()
    assert _ctx().remaining() is None
    left = _ctx(deadline=loop.time() + 2).remaining()
    assert left is not None and 1.9 < left <= 2


# subscribers -------------------------------------------------------------------------------


async def test_failing_subscriber_does_not_stop_the_others() -> None:
    m = Mediator("me")
    got: list[int] = []

    async def broken(evt: Happened) -> None:
        if evt.n % 2:
            raise RuntimeError(f"odd {evt.n}")

    def fine(evt: Happened, ctx: Context) -> None:
        got.append(evt.n)

    m.add_subscriber(broken)
    m.add_subscriber(fine)
    for n in range(5):
        assert m.deliver(Happened.__wire_name__, Happened(n), _ctx()) == 2
    await m.idle(2.0)
    assert got == [0, 1, 2, 3, 4]  # in publish order
    broken_entry, fine_entry = m.subscribers[Happened.__wire_name__]
    assert (broken_entry.delivered, broken_entry.failed) == (3, 2)  # 1 and 3 failed
    assert (fine_entry.delivered, fine_entry.failed) == (5, 0)
    assert broken_entry.worker is None and fine_entry.worker is None  # workers finished


async def test_deliver_without_subscribers() -> None:
    assert Mediator("me").deliver(Happened.__wire_name__, Happened(1), _ctx()) == 0


async def test_subscriber_queue_limit_drops_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mediator_module, "SUBSCRIBER_QUEUE_LIMIT", 5)
    m = Mediator("me")
    got: list[int] = []

    async def slow(evt: Happened) -> None:
        got.append(evt.n)

    m.add_subscriber(slow)
    # No await in between: the worker cannot run, so the queue fills up.
    for n in range(8):
        m.deliver(Happened.__wire_name__, Happened(n), _ctx())
    entry = m.subscribers[Happened.__wire_name__][0]
    assert len(entry.queue) == 5
    assert entry.dropped == 3
    await m.idle(2.0)
    assert got == [0, 1, 2, 3, 4]  # the newest were dropped, the queued kept their order
    assert entry.delivered == 5
    # With room again, delivery resumes.
    m.deliver(Happened.__wire_name__, Happened(100), _ctx())
    await m.idle(2.0)
    assert got[-1] == 100 and entry.dropped == 3


async def test_cancel_subscribers_clears_queues() -> None:
    m = Mediator("me")
    started = asyncio.Event()

    async def stuck(evt: Happened) -> None:
        started.set()
        await asyncio.sleep(30)

    m.add_subscriber(stuck)
    for n in range(3):
        m.deliver(Happened.__wire_name__, Happened(n), _ctx())
    entry = m.subscribers[Happened.__wire_name__][0]
    async with asyncio.timeout(2):
        await started.wait()
    worker = entry.worker
    assert worker is not None
    m.cancel_subscribers()
    async with asyncio.timeout(2):
        await asyncio.gather(worker, return_exceptions=True)
    assert worker.cancelled()
    assert not entry.queue and entry.worker is None
