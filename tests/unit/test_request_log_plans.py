"""The request log's searches use the index of their most selective filter (SQLite's query plans).

SQLite keeps no statistics unless ANALYZE runs, so it picks an index by the query's shape alone: the
search must make the box's (or subscription's) index the only one a combined filter can use, or a
search for one box's REJECTED rows walks every REJECTED row (seconds at 10 million rows).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from log_fakes import memory_request_log

from reconciler.request_log_store import LogFilter, search_statement


def plan(where: LogFilter) -> str:
    log = memory_request_log()
    sql = search_statement(where).compile(dialect=log.engine.dialect, compile_kwargs={"literal_binds": True})
    with log.engine.connect() as conn:
        return " | ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))


@pytest.mark.parametrize(("where", "index"), [
    (LogFilter(secure_client_id="C-1", state="REJECTED"), "ix_log_client"),
    (LogFilter(secure_client_id="C-1", operation="SET_PIN", process_name="api"), "ix_log_client"),
    (LogFilter(subscription_id="S-1", state="PENDING", kind="COMMAND"), "ix_log_subscription"),
    (LogFilter(operation="SET_PIN", state="REJECTED"), "ix_log_operation"),
    (LogFilter(process_name="api", since=datetime(2026, 1, 1, tzinfo=UTC)), "ix_log_process"),
    (LogFilter(state="REJECTED"), "ix_log_state"),
    (LogFilter(), "ix_log_created"),
])
def test_a_search_walks_the_index_of_its_most_selective_filter(where: LogFilter, index: str) -> None:
    found = plan(where)
    assert f"USING INDEX {index}" in found, found
    assert "TEMP B-TREE" not in found, found  # the index gives the order: no sort
