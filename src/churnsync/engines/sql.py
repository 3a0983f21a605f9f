"""One feature definition, two engines: the DuckDB feature SQL, with its parameters inlined, as Spark SQL.

The feature queries of :mod:`churnsync.features` are written once, in DuckDB's dialect with ``?`` placeholders.
:func:`to_spark_sql` inlines the parameters as typed literals and transpiles the text with sqlglot, with two
corrections where a literal translation would change the meaning:

- DuckDB's ``epoch(ts)`` keeps the fraction of a second; sqlglot's ``UNIX_TIMESTAMP(ts)`` truncates it. It becomes
  ``UNIX_MICROS(ts) / 1e6`` (exact in a double until the year 2255).
- A number with a decimal point is a DECIMAL literal in Spark, where ``BIGINT / DECIMAL`` keeps 6 decimals; DuckDB
  divides in DOUBLE. Such literals become ``CAST(… AS DOUBLE)``.
- The final ``ORDER BY`` is dropped: a global sort costs a shuffle of every row and Spark results are
  re-ordered where order matters (the driver sorts the predictions it writes).

Time is UTC on both sides: DuckDB runs with ``TimeZone = 'UTC'`` and the Spark session with
``spark.sql.session.timeZone = UTC``. ``tests/test_engines_spark.py`` runs the same data through both engines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from churnsync.errors import DataError

if TYPE_CHECKING:
    from sqlglot import exp

__all__ = ["inline_parameters", "to_spark_sql"]


def _literal(value: Any) -> str:
    """``value`` as a DuckDB literal of the type a bound parameter would have."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "CAST('NaN' AS DOUBLE)"
        if math.isinf(value):
            return f"CAST('{'' if value > 0 else '-'}Infinity' AS DOUBLE)"
        # A bare 1.5 is a DECIMAL in both dialects; a bound float is a DOUBLE.
        return f"CAST({value!r} AS DOUBLE)"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise DataError(f"SQL parameter {value!r} is zone-aware", remedy="Pass naive UTC times (a bug: report it)")
        return f"CAST('{value.isoformat(sep=' ', timespec='microseconds')}' AS TIMESTAMP)"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise DataError(f"SQL parameter of type {type(value).__name__} cannot be inlined", remedy="Report this")


def inline_parameters(sql: str, params: Sequence[Any]) -> str:
    """Replace each ``?`` outside string literals of ``sql`` by the next parameter as a literal."""
    out: list[str] = []
    values = iter(params)
    used = 0
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted
        if char == "?" and not quoted:
            try:
                out.append(_literal(next(values)))
            except StopIteration:
                raise DataError("SQL has more placeholders than parameters", remedy="Report this") from None
            used += 1
            continue
        out.append(char)
    if used != len(params):
        raise DataError(f"SQL has {used} placeholders for {len(params)} parameters", remedy="Report this")
    return "".join(out)


def _double(number: str) -> exp.Expression:
    from sqlglot import exp

    return exp.Cast(this=exp.Literal.number(number), to=exp.DataType.build("DOUBLE"))


def to_spark_sql(sql: str, params: Sequence[Any]) -> str:
    """The DuckDB query ``sql`` (``?`` placeholders bound to ``params``) as one Spark SQL statement."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(inline_parameters(sql, params), read="duckdb")

    def fix(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.TimeToUnix):
            micros = exp.Anonymous(this="UNIX_MICROS", expressions=[node.this])
            return exp.Div(this=micros, expression=_double("1000000.0"))
        decimal = isinstance(node, exp.Literal) and not node.is_string and any(c in node.this for c in ".eE")
        if decimal and not isinstance(node.parent, exp.Cast):
            # 7.0 is a DECIMAL in Spark, and BIGINT / DECIMAL is rounded to 6 decimals: DuckDB divides in DOUBLE.
            return _double(node.this)
        return node

    tree = tree.transform(fix)
    tree.set("order", None)
    return tree.sql(dialect="spark")
