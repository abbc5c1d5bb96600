"""Numbers handed out once each (``counters``): a queue's or an application's number is never
given again, not even after the one that had it was deleted — seed 000's clients name things
by integer, and a number naming something else later would be a silent mistake."""

from __future__ import annotations

from sqlalchemy import update
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
