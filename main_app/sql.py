"""
Helpers for the few statements of the station data endpoint written as fixed SQL.

The endpoint runs about ten statements per message. Building each one through the ORM
(queryset, query, compiler, SQL text) costs more CPU than sending and running it, so the
statements of the hot path are written once, as SQL with placeholders, and use these
helpers to stay portable between PostgreSQL and SQLite (docs/performance.md has the
figures). Everything else keeps using the ORM.
"""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

import orjson
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import Field, Model
from django.db.models.sql import Query


def db() -> BaseDatabaseWrapper:
    """
    This thread's connection itself. `connection` is a proxy that looks the thread's
    connection up again (in asgiref's thread-local storage) on every attribute it is asked
    for; the hot path asked about thirty times a message (docs/performance.md, eleventh
    pass), so its helpers look it up once each.
    """
    return connections[DEFAULT_DB_ALIAS]


def quote(name: str) -> str:
    return connection.ops.quote_name(name)


def for_update(of: str = "") -> str:
    """` FOR UPDATE [OF table]`, or nothing where the database has no row locks (SQLite)."""
    if not connection.features.has_select_for_update:
        return ""
    return f" FOR UPDATE OF {quote(of)}" if of else " FOR UPDATE"


def in_values(column: str, values: Iterable[str]) -> tuple[str, list]:
    """
    The text `column` matches one of `values`. On PostgreSQL one parameter, so the statement
    text, and its prepared plan, is the same whatever the number of values: a JSON array,
    read back as a text array. psycopg builds an array parameter in Python, element by
    element (about 25 us of the worker's CPU for a station's 17 serials, a quarter of a
    round trip); orjson encodes the list in C (docs/performance.md, tenth pass).
    """
    values = list(values)
    if db().vendor == "postgresql":
        return f"{column} = ANY(ARRAY(SELECT jsonb_array_elements_text(%s::jsonb)))", [orjson.dumps(values).decode()]
    return f"{column} IN ({', '.join(['%s'] * len(values))})", values


def db_value(field: Field, value: Any) -> Any:
    """`value` as the database driver takes it for `field` (UUIDs, JSON, datetimes)."""
    wrapper = db()
    # PostgreSQL's driver takes an aware datetime as it is, and Django's conversion returns
    # it unchanged after its naive-time checks, at about 10 us a value, five times a
    # message. (SQLite's takes text, which the conversion makes.)
    if type(value) is datetime and value.tzinfo is not None and wrapper.vendor == "postgresql":
        return value
    return field.get_db_prep_save(value, wrapper)


def cursor() -> CursorWrapper:
    """
    A cursor for the hot path's statements, made once per database connection and reused.

    Django's `connection.cursor()` builds a new driver cursor and its wrapper for every
    statement (on psycopg a copy of the connection's adapters each time): about 25 us of
    the worker's CPU, five or six times a message (docs/performance.md, eleventh pass). A
    DB-API cursor can run any number of statements, one after the other, so each thread's
    connection keeps one. It is made again when the connection is not the one it was made
    on (closed and opened again between requests) and when query logging is turned on or
    off (`assertNumQueries`, DEBUG), so it is always the cursor `connection.cursor()` would
    have given; the wrapper keeps Django's error translation and the health check runs as
    it would for a new cursor.
    """
    wrapper = db()
    wrapper.close_if_health_check_failed()
    kept = wrapper.__dict__.get(_KEPT_CURSOR)
    if kept is not None and kept[0] is wrapper.connection and kept[1] == wrapper.queries_logged:
        return kept[2]
    made = wrapper.cursor()
    wrapper.__dict__[_KEPT_CURSOR] = (wrapper.connection, wrapper.queries_logged, made)
    return made


_KEPT_CURSOR = "_hot_path_cursor"


def fetch(sql: str, params: Sequence[Any]) -> list[tuple]:
    kept = cursor()
    kept.execute(sql, params)
    return kept.fetchall()


class Columns:
    """
    Some fields of a model: their column list for a SELECT, and model instances built from
    the rows it returns, with the same conversions the ORM applies.
    """

    def __init__(self, model: type[Model], names: Sequence[str]):
        meta = model._meta
        self.model = model
        self.fields = [meta.get_field(name) for name in names]
        self.attnames = [field.attname for field in self.fields]
        self.table = quote(meta.db_table)
        self.sql = ", ".join(f"{self.table}.{quote(field.column)}" for field in self.fields)
        # The ORM's conversions for these columns, worked out once per connection (thread).
        self._converters: WeakKeyDictionary = WeakKeyDictionary()

    def instances(self, rows: Iterable[tuple]) -> list[Model]:
        wrapper = db()
        try:
            compiler, converters = self._converters[wrapper]
        except KeyError:
            compiler = Query(self.model).get_compiler(connection=wrapper)
            table = self.model._meta.db_table
            converters = compiler.get_converters([field.get_col(table) for field in self.fields])
            self._converters[wrapper] = compiler, converters
        if converters:
            rows = compiler.apply_converters(rows, converters)
        return [self.model.from_db(wrapper.alias, self.attnames, tuple(row)) for row in rows]
