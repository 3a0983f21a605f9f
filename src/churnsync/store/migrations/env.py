"""Alembic environment for the attribute store, driven programmatically by ``AttributeStore.migrate``.

There is no alembic.ini: the store passes an open connection in ``config.attributes["connection"]``.
For a developer who writes a new revision, the same works from a shell::

    from alembic import command
    from churnsync.store.store import alembic_config
    command.revision(alembic_config(), message="...", rev_id="0002")
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from churnsync.store.schema import metadata


def run_migrations_online() -> None:
    """Run the migrations on the connection handed over by the store."""
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("churnsync migrations run through AttributeStore.migrate(), with a connection")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: later revisions rebuild tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("churnsync migrations run online only, through AttributeStore.migrate()")
run_migrations_online()
