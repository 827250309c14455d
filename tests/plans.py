"""The plan the database chooses for a query, as text: SQLite's EXPLAIN QUERY PLAN or
PostgreSQL's EXPLAIN, with the query's parameters written in."""

from __future__ import annotations

from sqlalchemy.sql import ClauseElement

from core.db import Database


def query_plan(db: Database, query: ClauseElement) -> str:
    compiled = query.compile(db.engine, compile_kwargs={"literal_binds": True})
    explain = "EXPLAIN QUERY PLAN" if db.is_sqlite else "EXPLAIN"
    with db.engine.connect() as connection:
        return "\n".join(str(row[-1]) for row in connection.exec_driver_sql(f"{explain} {compiled}"))
