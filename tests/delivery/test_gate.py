"""The per-next-hop connection cap (delivery.engine._Gate): a semaphore whose limit a
reload of delivery.per_destination changes while connections hold it (issue 14 item 4).
The relay-level test is tests/test_reload.py."""

from __future__ import annotations

import asyncio

from relaywarden.delivery.engine import _Gate


async def _holders(gate: _Gate, count: int, release: asyncio.Event, inside: list[int]):
    async def one(i: int) -> None:
        async with gate:
            inside.append(i)
            await release.wait()
    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await asyncio.sleep(0.01)
    return tasks


def test_a_higher_limit_lets_waiters_in_at_once():
    async def run():
        gate, release, inside = _Gate(1), asyncio.Event(), []
        tasks = await _holders(gate, 5, release, inside)
        assert len(inside) == 1
        gate.resize(3)
        await asyncio.sleep(0.01)
        assert len(inside) == 3 and gate.used == 3
        release.set()
        await asyncio.gather(*tasks)
        assert len(inside) == 5 and gate.used == 0
    asyncio.run(run())


def test_a_lower_limit_lets_no_one_new_in_until_holders_leave():
    async def run():
        gate, inside = _Gate(3), []
        first = asyncio.Event()
        tasks = await _holders(gate, 3, first, inside)
        gate.resize(1)
        later, late_inside = asyncio.Event(), []
        more = await _holders(gate, 2, later, late_inside)
        assert late_inside == []                   # 3 inside, limit 1
        first.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(0.01)
        assert len(late_inside) == 1 and gate.used == 1   # one at a time now
        later.set()
        await asyncio.gather(*more)
        assert len(late_inside) == 2 and gate.used == 0
    asyncio.run(run())


def test_a_cancelled_waiter_gives_its_turn_on():
    async def run():
        gate, release, inside = _Gate(1), asyncio.Event(), []
        tasks = await _holders(gate, 3, release, inside)
        tasks[1].cancel()                          # waiting: leaves without a slot
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert sorted(inside) == [0, 2] and gate.used == 0
    asyncio.run(run())


def test_a_waiter_cancelled_after_its_wake_up_passes_the_turn_on():
    async def run():
        gate, release, inside = _Gate(1), asyncio.Event(), []
        tasks = await _holders(gate, 3, release, inside)
        gate.used -= 1          # as __aexit__, without a task switch in between:
        gate._wake()            # waiter 1 is woken ...
        tasks[1].cancel()       # ... and cancelled before it runs
        await asyncio.sleep(0.01)
        assert 2 in inside, "the turn was lost with the cancelled waiter"
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.run(run())


def test_a_freed_slot_goes_to_the_oldest_waiter_not_to_a_newcomer():
    """First come, first served: the slot a holder frees is the oldest waiter's, counted
    as used before that waiter runs, so a task that arrives in between waits behind it and
    the woken waiter never has to wait again (that churn was ~3 wake-ups per message)."""
    async def run():
        gate, order = _Gate(1), []
        await gate.__aenter__()                       # the holder

        async def waiter(name: str) -> None:
            await gate.__aenter__()
            order.append(name)
            await asyncio.sleep(0)
            gate.release()

        first = asyncio.create_task(waiter("first"))
        await asyncio.sleep(0)                        # first is waiting
        gate.release()                                # its slot, already counted
        assert gate.used == 1 and not gate._waiters
        late = asyncio.create_task(waiter("late"))    # arrives before first runs
        await asyncio.gather(first, late)
        assert order == ["first", "late"]
        assert gate.used == 0 and not gate._waiters
    asyncio.run(run())
