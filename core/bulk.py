"""Multi-row statements on the session's own DB-API connection, inside its transaction.

The pipeline writes tens of thousands of rows a second; SQLAlchemy's per-row parameter
processing (bind processors, compiled-parameter dicts) cost more CPU than the driver's
``executemany`` itself. Here each column's bind processor (e.g. SQLite's DateTime to text)
is looked up once per statement and applied only where the column type has one; the rows
go to the driver as tuples. The statements are plain INSERT and UPDATE-by-key texts
built from the Table, so the SQL is the same on SQLite (``?``) and PostgreSQL (``%s``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

__all__ = ["fetch_in", "insert_rows", "update_rows"]


@contextmanager
def _driver_errors(session: Session, statement: str) -> Iterator[None]:
    """The driver's errors as SQLAlchemy's (OperationalError, DataError, ...), as if the
    statement had gone through SQLAlchemy: callers tell transient from permanent by them."""
    dbapi = session.get_bind().dialect.dbapi
    try:
        yield
    except Exception as exc:
        if dbapi is not None and isinstance(exc, dbapi.Error):
            raise DBAPIError.instance(statement, None, exc, dbapi.Error) from exc
        raise


def _placeholder(session: Session) -> str:
    return "?" if session.get_bind().dialect.paramstyle == "qmark" else "%s"


def _processors(session: Session, table: Table, columns: Sequence[str]) -> list[Callable[[Any], Any] | None]:
    dialect = session.get_bind().dialect
    return [_last_value(table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in columns]


def _last_value(processor: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    """The processor, remembering its last answer: a batch's rows share their timestamp."""
    if processor is None:
        return None
    last: list[Any] = [object(), None]

    def process(value: Any) -> Any:
        if value is not last[0]:
            last[0], last[1] = value, processor(value)
        return last[1]

    return process


def _tuples(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], processors: list[Callable[[Any], Any] | None]
) -> list[tuple[Any, ...]]:
    if not any(processors):
        return [tuple(row[c] for c in columns) for row in rows]
    pairs = list(zip(columns, processors, strict=True))
    return [tuple(p(row[c]) if p is not None else row[c] for c, p in pairs) for row in rows]


def insert_rows(
    session: Session, table: Table, rows: Sequence[dict[str, Any]], *, ignore: Sequence[str] = ()
) -> None:
    """INSERT every row (all with the same keys); ``ignore``: the conflict target of an
    insert-or-ignore (ON CONFLICT (...) DO NOTHING)."""
    if not rows:
        return
    columns = list(rows[0])
    if session.get_bind().dialect.name == "postgresql":
        if not ignore:
            _copy_rows(session, table.name, columns, rows)
            return
        # Insert-or-ignore: COPY into a temporary twin, then one INSERT ... SELECT.
        stage = f"stage_{table.name}"
        session.connection().exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table.name}) ON COMMIT DELETE ROWS"
        )
        _copy_rows(session, stage, columns, rows)
        session.connection().exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM {stage} "
            f"ON CONFLICT ({', '.join(ignore)}) DO NOTHING"
        )
        return
    mark = _placeholder(session)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
    if ignore:
        sql += f" ON CONFLICT ({', '.join(ignore)}) DO NOTHING"
    _executemany(session, sql, table, columns, rows)


def _executemany(
    session: Session, sql: str, table: Table, columns: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    cursor = session.connection().connection.cursor()
    try:
        with _driver_errors(session, sql):
            cursor.executemany(sql, _tuples(rows, columns, _processors(session, table, columns)))
    finally:
        cursor.close()


def _copy_rows(session: Session, table: str, columns: list[str], rows: Sequence[dict[str, Any]]) -> None:
    # PostgreSQL: COPY takes the rows as one stream (in order, so serial ids follow them);
    # an executemany sends one INSERT per row, ~3x the time for a batch's 5,000 rows.
    cursor = session.connection().connection.cursor()
    try:
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with _driver_errors(session, statement), cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(tuple(row[c] for c in columns))
    finally:
        cursor.close()


def update_rows(session: Session, table: Table, keys: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """UPDATE the row of each key (``keys``: its columns, found in every row) with the
    row's other values."""
    if not rows:
        return
    values = [c for c in rows[0] if c not in keys]
    mark = _placeholder(session)
    sql = (
        f"UPDATE {table.name} SET {', '.join(f'{c} = {mark}' for c in values)} "
        f"WHERE {' AND '.join(f'{c} = {mark}' for c in keys)}"
    )
    columns = [*values, *keys]
    _executemany(session, sql, table, columns, rows)


_IN_SIZES = (1, 8, 64, 256)  # IN-lists are padded to these sizes, so the driver reuses prepared statements


def fetch_in(
    session: Session, sql: str, values: Sequence[Any], *, params: Sequence[Any] = (), lock: bool = False
) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (a SELECT whose WHERE ends with "IN {values}"; "{mark}" stands for a
    parameter) for every value, a few fixed-size IN-lists at a time (the last value
    repeated to fill one). ``params``: bound before the values. ``lock``: FOR UPDATE, where
    the database has it (PostgreSQL)."""
    mark = _placeholder(session)
    postgresql = session.get_bind().dialect.name == "postgresql"
    suffix = " FOR UPDATE" if lock and postgresql else ""
    out: list[tuple[Any, ...]] = []
    cursor = session.connection().connection.cursor()
    try:
        with _driver_errors(session, sql):
            if postgresql:
                # One array parameter instead of an IN-list: one statement text, prepared once.
                query = sql.replace("IN {values}", "= ANY({mark})").format(mark=mark)
                cursor.execute(query + suffix, [*params, list(values)])
                return list(cursor.fetchall())
            start = 0
            while start < len(values):
                left = len(values) - start
                size = next((n for n in _IN_SIZES if n >= left), _IN_SIZES[-1])
                chunk = list(values[start : start + size])
                chunk += [chunk[-1]] * (size - len(chunk))
                in_list = "(" + ", ".join([mark] * size) + ")"
                cursor.execute(sql.format(mark=mark, values=in_list) + suffix, [*params, *chunk])
                out += cursor.fetchall()
                start += size
    finally:
        cursor.close()
    return out
