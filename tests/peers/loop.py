"""An asyncio event loop in a daemon thread, for peers that must answer while a test blocks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Self, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "peer-loop", loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
                 ) -> None:
        self.name = name
        self.loop = (loop_factory or asyncio.new_event_loop)()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> LoopThread:
        self._thread.start()
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on this loop and wait for its result from any other thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


class ServedPeer:
    """A peer listening on its own LoopThread (or a shared one): start, stop, ``with``.

    Subclasses set ``host``/``port`` and implement ``_listen`` (create the server).
    """

    host: str
    port: int
    _loop: LoopThread | None = None
    _server: asyncio.AbstractServer | None = None
    _own_loop = False

    async def _listen(self) -> asyncio.AbstractServer:
        raise NotImplementedError

    async def _closing(self) -> None:
        """Subclasses stop their own tasks here (on the peer's loop), before the listener closes."""

    def start(self, loop: LoopThread | None = None) -> Self:
        self._own_loop = loop is None
        self._loop = loop or LoopThread(type(self).__name__).start()
        self._server = self._loop.call(self._listen())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None and self._loop is not None:
            server = self._server

            async def close() -> None:
                await self._closing()
                server.close()
                # wait_closed would wait for kept-alive client connections; closing the listener is enough

            self._loop.call(close())
            self._server = None
            if self._own_loop:
                self._loop.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
