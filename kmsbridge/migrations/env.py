"""Alembic environment of kmsbridge: the executor's ledger, the reconciler's and the request log's tables, one history.

Run through :func:`kmsbridge.db.upgrade` (which passes an open connection in
``config.attributes["connection"]``); ``alembic -c <ini>`` with ``sqlalchemy.url`` works too, for
developers writing a new revision (``--autogenerate`` compares against both metadata objects).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from consumers.ledger import LEDGER_METADATA
from reconciler.request_log_tables import LOG_METADATA
from reconciler.run_tables import RUNS_METADATA
from reconciler.tables import DESIRED_METADATA

config = context.config
target_metadata = [LEDGER_METADATA, DESIRED_METADATA, LOG_METADATA, RUNS_METADATA]


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
