"""Numbers handed out once each (``counters``): a queue's or an application's number is never
given again, not even after the one that had it was deleted — seed 000's clients name things
by integer, and a number naming something else later would be a silent mistake."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from apportion.store import schema


async def take_number(conn: AsyncConnection, name: str) -> int:
    """The next number of counter ``name`` (1 first), taken inside the caller's write
    transaction, so that the number and the row that carries it are committed together."""
    counters = schema.counters
    taken = (
        await conn.execute(
            update(counters)
            .where(counters.c.name == name)
            .values(value=counters.c.value + 1)
            .returning(counters.c.value)
        )
    ).scalar()
    if taken is not None:
        return int(taken)
    await conn.execute(counters.insert().values(name=name, value=1))
    return 1


async def raise_counter(conn: AsyncConnection, name: str, value: int) -> None:
    """Set counter ``name`` to ``value`` if that is more than it holds (a high-water mark),
    inside the caller's write transaction."""
    counters = schema.counters
    raised = await conn.execute(
        update(counters)
        .where(counters.c.name == name, counters.c.value < value)
        .values(value=value)
    )
    if raised.rowcount == 0:
        held = select(counters.c.value).where(counters.c.name == name)
        if (await conn.execute(held)).scalar() is None:
            await conn.execute(counters.insert().values(name=name, value=value))
