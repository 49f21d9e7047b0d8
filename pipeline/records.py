"""Per-trial Parquet records: one explicit pyarrow schema per table, one atomic, deterministic writer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_write_bytes
from pipeline.labels import hparams_key
from pipeline.layout import DONE_MARK, ResultsLayout
from pipeline.schemas import (
    FINISHED, IDENTIFYING_COLUMNS, OUTPUT_TABLES, STATUS, TRIAL_COLUMNS, TRIAL_TABLES, TableSpec,
)

Records = Mapping[str, Sequence[Mapping[str, object]]]

# The schemas live in pipeline/schemas.py (defined once); re-exported for callers of this module.
SCHEMAS: dict[str, pa.Schema] = {name: spec.schema for name, spec in TRIAL_TABLES.items()}

__all__ = [
    "IDENTIFYING_COLUMNS",
    "OUTPUT_TABLES",
    "SCHEMAS",
    "TRIAL_TABLES",
    "Records",
    "TableSpec",
    "identifying_values",
    "read_trial_records",
    "rows_to_table",
    "write_table",
    "write_trial_records",
]

# Parquet writer options fixed here so that the same rows always give the same bytes (no
# timestamps are written by parquet-cpp; "created_by" names the pyarrow version only).
_WRITE_OPTIONS = {"compression": "zstd", "use_dictionary": True, "write_statistics": True}


def identifying_values(identity: Mapping[str, object]) -> dict[str, object]:
    """A trial's identifying columns (pipeline.config.Trial.identity), checked and in schema order."""
    missing = [name for name in IDENTIFYING_COLUMNS if name not in identity]
    if missing:
        raise ValueError(f"trial: missing key(s) {missing}; a trial's identity needs {list(IDENTIFYING_COLUMNS)}")
    values = {name: identity[name] for name in IDENTIFYING_COLUMNS}
    schema = TRIAL_TABLES["convergence"].schema
    for name, value in values.items():
        _check_value("trial", name, schema.field(name), value)
    return values


def _check_value(where: str, column: str, field: pa.Field, value: object) -> None:
    """Reject values that pyarrow would silently coerce (2.5 -> int 2, True -> 1.0)."""
    if value is None:
        if not field.nullable:
            raise ValueError(f"{where}: column {column!r} is null; it is not nullable")
        return
    kind = field.type
    is_bool = isinstance(value, (bool, np.bool_))
    if pa.types.is_boolean(kind):
        ok = is_bool
    elif pa.types.is_integer(kind):
        ok = isinstance(value, (int, np.integer)) and not is_bool
    elif pa.types.is_floating(kind):
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not is_bool
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{where}: column {column!r} expects {kind}, got {type(value).__name__} {value!r}")


def _spec(table: str | TableSpec, known: Mapping[str, TableSpec]) -> TableSpec:
    if isinstance(table, TableSpec):
        return table
    if table not in known:
        raise ValueError(f"table: unknown table {table!r}; known tables are {sorted(known)}")
    return known[table]


def rows_to_table(
    table: str | TableSpec, rows: Iterable[Mapping[str, object]], *, identifying: bool = True
) -> pa.Table:
    """Validate rows against a table's schema and build a pyarrow table (in the rows' order).

    ``table`` is a trial table's name or any TableSpec. With ``identifying=True`` the rows must
    carry every column of the schema; otherwise (experiment rows) exactly the schema's columns
    less the trial's own (identifying ones and its status). A missing, unexpected, null (where not nullable) or mistyped
    value raises a ValueError naming the table and the column.
    """
    spec = _spec(table, TRIAL_TABLES)
    schema = spec.schema
    names = schema.names if identifying else [n for n in schema.names if n not in TRIAL_COLUMNS]
    expected = set(names)
    columns: dict[str, list[object]] = {name: [] for name in names}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"table {spec.name!r}: row {i} is a {type(row).__name__}, not a dict")
        keys = set(row)
        if keys != expected:
            missing, extra = sorted(expected - keys), sorted(keys - expected)
            problems = ([f"missing column(s) {missing}"] if missing else []) + (
                [f"unexpected column(s) {extra}"] if extra else []
            )
            raise ValueError(f"table {spec.name!r}: row {i} has {' and '.join(problems)}; expected exactly {names}")
        for name in names:
            value = row[name]
            _check_value(f"table {spec.name!r} row {i}", name, schema.field(name), value)
            columns[name].append(value)
    fields = [schema.field(name) for name in names]
    arrays = [pa.array(columns[f.name], type=f.type) for f in fields]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _sorted(spec: TableSpec, data: pa.Table) -> pa.Table:
    """Rows in a fixed order: the table's key columns, then every other column as a tie-break,
    so that the same set of rows always gives the same file whatever order it came in."""
    if data.num_rows <= 1:
        return data
    keys = [k for k in spec.sort_keys if k in data.column_names]
    keys += [k for k in data.column_names if k not in keys]
    return data.sort_by([(k, "ascending", "at_end") for k in keys])


def write_table(table: str | TableSpec, data: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write one table atomically, cast to its schema and sorted: same rows, same bytes.

    ``table`` is a TableSpec or the name of an aggregate table (pipeline.schemas.OUTPUT_TABLES).
    """
    spec = _spec(table, OUTPUT_TABLES)
    if data.schema.names != spec.schema.names:
        raise ValueError(
            f"table {spec.name!r}: columns {data.schema.names} differ from the schema's {spec.schema.names}"
        )
    return atomic_write_bytes(path, encode_table(spec, data))


def encode_table(spec: TableSpec, data: pa.Table) -> bytes:
    """The Parquet bytes of a table, cast to its schema and sorted: same rows, same bytes."""
    # No schema metadata: nothing pandas-specific, nothing that varies between runs.
    data = _sorted(spec, data.cast(spec.schema)).replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    pq.write_table(data, sink, **_WRITE_OPTIONS)
    return sink.getvalue().to_pybytes()


def encode_trial_records(
    identity: Mapping[str, object], records: Records, *, status: str = FINISHED
) -> dict[str, bytes]:
    """A trial's records as Parquet bytes per table (what travels from a trial to the results store).

    Rows carry only the experiment's own columns; the trial's identifying columns and its status
    (pipeline.schemas.STATUS) are added here.
    Every table is validated before any bytes exist, so bad rows leave no partial records. A table
    given with no rows is still encoded (empty), so the aggregate stage knows it ran.
    """
    ident = {**identifying_values(identity), "status": status}
    built: dict[str, bytes] = {}
    for table in sorted(records):
        if table not in TRIAL_TABLES:
            raise ValueError(f"records: unknown table {table!r}; trial tables are {list(TRIAL_TABLES)}")
        rows = records[table]
        if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
            raise ValueError(f"records: table {table!r} must be a list of row dicts, not {type(rows).__name__}")
        rows_to_table(table, rows, identifying=False)  # checks the experiment's own columns
        data = rows_to_table(table, [{**ident, **row} for row in rows], identifying=True)
        built[table] = encode_table(TRIAL_TABLES[table], data)
    return built


def write_encoded_records(records_dir: str | os.PathLike[str], encoded: Mapping[str, bytes]) -> list[Path]:
    """Write encoded trial records to ``<records_dir>/<table>.parquet`` (atomically, one file per table)."""
    unknown = sorted(set(encoded) - set(TRIAL_TABLES))
    if unknown:
        raise ValueError(f"records: unknown table(s) {unknown}; trial tables are {list(TRIAL_TABLES)}")
    return [atomic_write_bytes(Path(records_dir) / f"{table}.parquet", payload) for table, payload in encoded.items()]


def write_trial_records(
    records_dir: str | os.PathLike[str], identity: Mapping[str, object], records: Records, *, status: str = FINISHED
) -> list[Path]:
    """Write a trial's records to ``<records_dir>/<table>.parquet`` (encode_trial_records, then write)."""
    return write_encoded_records(records_dir, encode_trial_records(identity, records, status=status))


def _older_hparams(data: pa.Table, expected: pa.Schema, path: Path) -> pa.Table:
    """Records written before `hparams` existed: the trial's hparams from its done mark ('{}' without
    one); _with_new_columns then fills the other new columns and puts them in the schema's order."""
    if "hparams" not in expected.names or "hparams" in data.column_names:
        return data
    try:
        value = hparams_key(json.loads((path.parent.parent / DONE_MARK).read_text()).get("hparams") or {})
    except (OSError, ValueError):
        value = hparams_key({})
    return data.append_column("hparams", pa.array([value] * data.num_rows, type=pa.string()))


def _read_parquet(table: str, path: Path) -> pa.Table:
    expected = TRIAL_TABLES[table].schema
    data = _with_new_columns(_older_hparams(pq.ParquetFile(path).read(), expected, path), expected)
    if data.schema.names != expected.names:
        raise ValueError(f"records file {path}: columns {data.schema.names} differ from the {table!r} schema")
    try:
        return data.cast(expected)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"records file {path}: does not match the {table!r} schema ({err})") from err


def _with_new_columns(data: pa.Table, expected: pa.Schema) -> pa.Table:
    """Records written before a column existed: the status column as finished (nothing diverged
    then), a nullable column as nulls, in the schema's order; anything else is left to fail."""
    if data.schema.names == expected.names:
        return data
    names = set(data.schema.names)
    added = {f.name for f in expected if f.name not in names and (f.nullable or f.name == STATUS[0].name)}
    if not added or names | added != set(expected.names):
        return data
    columns = []
    for f in expected:
        if f.name in added:
            fill = FINISHED if f.name == STATUS[0].name else None
            columns.append(pa.array([fill] * data.num_rows, type=f.type))
        else:
            columns.append(data.column(f.name))
    return pa.Table.from_arrays(columns, names=expected.names)


def read_trial_records(layout: ResultsLayout, trial_ids: Iterable[str] | None = None) -> dict[str, pa.Table]:
    """Every trial's records (pipeline.layout), concatenated per table; with ``trial_ids``, only those
    trials' (the aggregate stage passes the trials with a done mark).

    Tables come back sorted by their key columns (trial first), so the result does not depend on
    the order in which trials finished. Only tables with at least one file appear.
    """
    wanted = None if trial_ids is None else set(trial_ids)
    parts: dict[str, list[pa.Table]] = {}
    for path in layout.record_files():
        if wanted is not None and path.parent.parent.name not in wanted:
            continue
        table = path.stem
        if table not in TRIAL_TABLES:
            raise ValueError(f"records file {path}: unknown table {table!r}; trial tables are {list(TRIAL_TABLES)}")
        parts.setdefault(table, []).append(_read_parquet(table, path))
    return {
        table: _sorted(TRIAL_TABLES[table], pa.concat_tables(parts[table]).combine_chunks())
        for table in TRIAL_TABLES
        if table in parts
    }
