"""Quarantined rows: every row a stage refuses is kept here with the field and the reason."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import pandas as pd

from marketsearch.schema import QUARANTINE_COLUMNS

_NOT_KEPT = {"data"}  # photo bytes stay in the raw snapshot; the quarantine keeps the row's fields


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (str, int, float, bool)):
        return None if isinstance(value, float) and value != value else value
    return str(value)


def record(table: str, row: Mapping, stage: str, field: str, reason: str) -> dict:
    raw = {k: _jsonable(v) for k, v in row.items() if k not in _NOT_KEPT}
    row_id = _jsonable(row.get("id"))
    return {
        "table": table,
        "row_id": str(row_id) if row_id not in (None, "") else "(missing)",
        "stage": stage,
        "field": field,
        "reason": reason,
        "raw": json.dumps(raw, ensure_ascii=False, sort_keys=True),
    }


def frame(records: Iterable[dict]) -> pd.DataFrame:
    return pd.DataFrame(list(records), columns=QUARANTINE_COLUMNS)


def summary(quarantine: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{table: {kind of reason: count}} for logs and reports; the kind is the reason up to its
    first colon ("price outlier: £60,000.00 outside ..." counts as "price outlier")."""
    out: dict[str, dict[str, int]] = {}
    kinds = quarantine.assign(kind=quarantine["reason"].str.split(":").str[0])
    for (table, reason), n in kinds.groupby(["table", "kind"]).size().items():
        out.setdefault(str(table), {})[str(reason)] = int(n)
    return out
