"""Fix for BentoML 1.4's dependency client under concurrency (upstream issue #4971, FIELD-NOTES).

The client a service uses to call its dependencies (`_bentoml_impl.client.proxy2.SessionManager`) replaces its
aiohttp session every 100 requests (or 300 s) and *closes the old one at once*, while other coroutines still
have requests in flight on it: those fail, and the router answers HTTP 500 on a few percent of requests at
concurrency 16. Here a retired session is closed only after the client timeout has passed, when every request
that could be using it has finished or timed out. `tests/test_serving.py` shows the failure without the fix
and zero errors with it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

_upstream: type | None = None  # BentoML's own SessionManager, kept when install() replaces it


def graceful_manager(base: type) -> type:
    class GracefulSessionManager(base):
        _session: Any

        async def get_session(self) -> Any:
            if self._session is None or self._should_refresh():
                old = self._session
                self._session = self._make_client()
                self._created_at = time.monotonic()
                self._request_count = 0
                if old is not None:
                    retired = self.__dict__.setdefault("_retired", set())
                    closing = self.__dict__.setdefault("_closing", set())  # keep the close tasks alive
                    retired.add(old)
                    grace = (self._timeout.total or 60.0) + 1.0

                    def close_old(s: Any = old) -> None:
                        retired.discard(s)
                        closing.add(task := asyncio.ensure_future(s.close()))
                        task.add_done_callback(closing.discard)

                    asyncio.get_running_loop().call_later(grace, close_old)
            self._request_count += 1
            return self._session

        async def close(self) -> None:
            for s in list(self.__dict__.get("_retired", ())):
                await s.close()
            self.__dict__.get("_retired", set()).clear()
            await super().close()

    return GracefulSessionManager


def install() -> None:
    global _upstream
    if _upstream is not None:
        return
    from _bentoml_impl.client import proxy2

    _upstream = proxy2.SessionManager
    proxy2.SessionManager = graceful_manager(_upstream)


def upstream_manager() -> type:
    """BentoML's SessionManager as it ships, whether or not install() has replaced it in this process (a test
    that imported serving.service has)."""
    from _bentoml_impl.client import proxy2

    return _upstream if _upstream is not None else proxy2.SessionManager
