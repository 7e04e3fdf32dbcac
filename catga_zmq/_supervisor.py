"""A node's background tasks: greetings that end by themselves, and loops that must not.

A loop that fails (heartbeats, the failure detector, the discovery loop) is logged at
ERROR and started again after ``RESTART_DELAY``; while it is down the node is not
healthy, and a loop that fails more than ``MAX_RESTARTS`` times within
``RESTART_WINDOW`` is given up on: ``on_fatal`` is called, and the node closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

log = logging.getLogger("catga_zmq.node")

#: A background loop that fails is started again after this pause ...
RESTART_DELAY: Final = 0.5  # s
#: ... unless it failed more than this many times within RESTART_WINDOW.
MAX_RESTARTS: Final = 5
RESTART_WINDOW: Final = 60.0  # s

LoopFn = Callable[[], Coroutine[Any, Any, None]]


class Supervisor:
    """Runs and restarts the background tasks of node ``node_id``."""

    def __init__(self, node_id: str, on_fatal: Callable[[str], None]) -> None:
        self.prefix = f"catga-{node_id}-"
        self.node_id = node_id
        self.on_fatal = on_fatal
        self.running = False  # restarts happen only while the node runs
        self.tasks: set[asyncio.Task[Any]] = set()
        self._loops: dict[str, LoopFn] = {}
        self._failures: dict[str, list[float]] = {}

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a task that ends by itself (a greeting); cancelled by ``stop()``."""
        task = asyncio.get_running_loop().create_task(coro, name=self.prefix + name)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def supervise(self, name: str, loop_fn: LoopFn) -> None:
        """Run ``loop_fn()`` as the loop ``name``, started again whenever it fails."""
        self._loops[name] = loop_fn
        self.spawn(loop_fn(), name)

    def problems(self) -> list[str]:
        """The loops that are not running now."""
        up = {t.get_name().removeprefix(self.prefix) for t in self.tasks}
        return [f"the {name} loop is not running" for name in self._loops if name not in up]

    async def stop(self) -> None:
        """Cancel every task and wait for them; nothing is started again."""
        self.running = False
        self._loops.clear()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        name = task.get_name().removeprefix(self.prefix)
        if exc is None:
            # Finished: a greeting, or a discovery backend with nothing more to report.
            self._loops.pop(name, None)
            return
        log.error("background task %s failed", task.get_name(), exc_info=exc)
        loop_fn = self._loops.get(name)
        if loop_fn is None or not self.running:
            return
        now = time.monotonic()
        failures = [t for t in self._failures.get(name, []) if now - t < RESTART_WINDOW]
        failures.append(now)
        self._failures[name] = failures
        if len(failures) > MAX_RESTARTS:
            self.on_fatal(
                f"the {name} loop of node {self.node_id} failed {len(failures)} times "
                f"within {RESTART_WINDOW:.0f} s (last: {exc!r}); the node closes"
            )
            return

        def restart() -> None:
            if self._loops.get(name) is loop_fn and self.running:
                self.spawn(loop_fn(), name)

        asyncio.get_running_loop().call_later(RESTART_DELAY, restart)
