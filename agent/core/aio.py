"""Small asyncio helpers shared by the agent's loops."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; True if it was set.

    asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for swallows a cancellation
    that arrives as the event is set (the scheduler's timer, cancelled at exit while a
    cancelled collector's run sets its wake-up event, went on running and asyncio.run never
    returned: `run` on a port in use hung instead of exiting 64)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
