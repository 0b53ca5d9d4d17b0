"""The cell store: schema round-trips, shards commit atomically, orphans of killed runs vanish."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.store import open_output, read_table, write_shard


def _cell(image: str, cell_id: int, shard: str) -> dict:
    row = {f.name: None for f in schema.CELL_SCHEMA}
    row.update(
        {
            schema.IMAGE: image,
            schema.CELL_ID: cell_id,
            schema.CROP: b"\x89PNG",
            schema.LABEL: 1,
            schema.SHARD: shard,
            schema.AT_BORDER: True,
        }
    )
    return row


def _ledger(image: str, shard: str, sha: str = "abc") -> dict:
    row = {f.name: None for f in schema.IMAGE_SCHEMA}
    row.update(
        {
            schema.IMAGE: image,
            schema.STATUS: schema.STATUS_INGESTED,
            schema.N_CELLS: 2,
            schema.SOURCE_SHA256: sha,
            schema.SHARD: shard,
        }
    )
    return row


def _shard(out, shard, images):
    cells = pa.Table.from_pylist([_cell(i, k, shard) for i in images for k in range(2)], schema=schema.CELL_SCHEMA)
    ledger = pa.Table.from_pylist([_ledger(i, shard) for i in images], schema=schema.IMAGE_SCHEMA)
    write_shard(out, shard, cells, schema.QUARANTINE_SCHEMA.empty_table(), ledger)


def test_schema_round_trips_through_parquet(tmp_path):
    open_output(tmp_path)
    _shard(tmp_path, "run1-a", ["a.png", "b.png"])
    table = read_table(tmp_path)
    assert table.schema.equals(schema.CELL_SCHEMA)
    assert table.num_rows == 4 and table.column(schema.LABEL).type == pa.int8()
    # each file on its own is plain Parquet with the same schema (pandas/polars/duckdb read it)
    (f,) = (tmp_path / "cells").glob("*.parquet")
    assert pq.read_schema(f).equals(schema.CELL_SCHEMA)


def test_open_output_reads_ledger_and_removes_orphans(tmp_path):
    open_output(tmp_path)
    _shard(tmp_path, "run1-a", ["a.png"])
    # a killed run: cells written, ledger never written, and a half-written temp file
    orphan = pa.Table.from_pylist([_cell("b.png", 0, "run2-b")], schema=schema.CELL_SCHEMA)
    pq.write_table(orphan, tmp_path / "cells" / "run2-b.parquet")
    (tmp_path / "cells" / "run2-c.parquet.tmp-1234").write_bytes(b"half")
    state = open_output(tmp_path)
    assert state.known == {"a.png": "abc"}
    assert state.orphans_removed == 2
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["run1-a.parquet"]
    assert read_table(tmp_path).column(schema.IMAGE).to_pylist() == ["a.png", "a.png"]


def test_empty_output_reads_as_empty_tables(tmp_path):
    state = open_output(tmp_path / "new")
    assert state.known == {} and read_table(tmp_path / "new").num_rows == 0
