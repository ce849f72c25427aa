"""The scheduler's wake-up (delivery.engine._Wakeup): set before the wait, set during it,
and the timeout, on a real event loop."""

from __future__ import annotations

import asyncio
import time

from relaywarden.delivery.engine import _Wakeup


def test_a_wake_up_before_the_wait_is_not_lost() -> None:
    async def main() -> float:
        wakeup = _Wakeup()
        wakeup.set()
        began = time.monotonic()
        await wakeup.wait(asyncio.get_running_loop(), 5.0)
        return time.monotonic() - began
    assert asyncio.run(main()) < 0.5


def test_a_wake_up_during_the_wait_ends_it_and_clear_rearms_it() -> None:
    async def main() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        wakeup = _Wakeup()
        loop.call_later(0.05, wakeup.set)
        began = time.monotonic()
        await wakeup.wait(loop, 5.0)
        woken = time.monotonic() - began
        assert wakeup.is_set()
        wakeup.clear()
        began = time.monotonic()
        await wakeup.wait(loop, 0.1)             # nothing sets it: the timeout ends it
        return woken, time.monotonic() - began, wakeup.is_set()
    woken, timed_out, still_set = asyncio.run(main())
    assert 0.04 <= woken < 1.0
    assert 0.09 <= timed_out < 1.0
    assert not still_set


def test_a_cancelled_wait_leaves_no_waiter_and_its_timer_is_cancelled() -> None:
    async def main() -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        wakeup = _Wakeup()
        task = loop.create_task(wakeup.wait(loop, 60.0))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        wakeup.set()                            # no waiter to resolve: no error
        return task.cancelled(), len([h for h in getattr(loop, "_scheduled", [])
                                      if not h.cancelled()])
    cancelled, timers = asyncio.run(main())
    assert cancelled
    assert timers == 0
