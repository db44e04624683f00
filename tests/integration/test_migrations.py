"""The migrations build exactly the schema the table definitions describe."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from exchange.db import create_engine, current_revision, head_revision, migrate
from exchange.embedded import EmbeddedPostgres
from migrations.metadata import metadata


async def test_migrations_on_an_empty_database_match_the_models(postgres: EmbeddedPostgres) -> None:
    name = f"empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url("postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = postgres.url(name)
    engine = create_engine(url)
    try:
        assert await current_revision(engine) is None
        # alembic runs its own event loop: run it in a thread, as `exchange migrate` would.
        await asyncio.to_thread(migrate, url)
        assert await current_revision(engine) == head_revision()

        def diff(connection: Connection) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))

        async with engine.connect() as connection:
            differences = await connection.run_sync(diff)
        assert differences == []
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(postgres.url("postgres"))
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
