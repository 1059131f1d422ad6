"""The SELECT of a filtered keyset page, shared by the SQL key stores (SQLite, PostgreSQL):
the same tables (``keys``, ``key_tags``), only the parameter mark and the prefix test differ."""

from __future__ import annotations

from typing import Any

from ..domain.model import KeyFilter


def keyset_select(columns: str, f: KeyFilter, after: str | None, *, mark: str, prefix: str,
                  order: bool = True) -> tuple[str, list[Any]]:
    """SELECT for a filtered keyset page. With a tag, walk key_tags' (tag, key_id) primary key,
    which is already in id order, so even a rare tag needs no full scan and no sort. ``mark``
    is the driver's parameter mark; ``prefix`` tests ``k.name`` against two parameters (the
    length, then the prefix)."""
    joins, where, args = "", [], list[Any]()
    id_col = "k.id"
    if f.tag is not None:
        joins, id_col = " JOIN key_tags AS t ON t.key_id = k.id", "t.key_id"
        where.append(f"t.tag = {mark}")
        args.append(f.tag)
    if after is not None:
        where.append(f"{id_col} > {mark}")
        args.append(after)
    for column, value in (("state", f.state), ("algorithm", f.algorithm), ("usage", f.usage)):
        if value is not None:
            where.append(f"k.{column} = {mark}")
            args.append(str(value))
    if f.name_prefix is not None:
        where.append(prefix)
        args += [len(f.name_prefix), f.name_prefix]
    sql = f"SELECT {columns} FROM keys AS k{joins}"  # noqa: S608  fixed fragments; values bind
    if where:
        sql += " WHERE " + " AND ".join(where)
    return (sql + f" ORDER BY {id_col}" if order else sql), args
