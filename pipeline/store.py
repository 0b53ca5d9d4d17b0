"""Writing and reading the cell tables of an ingest output directory, exactly once per image.

Layout of an ingest output DIR:
    DIR/cells/<shard>.parquet        one row per white cell (schema.CELL_SCHEMA)
    DIR/quarantine/<shard>.parquet   one row per unusable input (schema.QUARANTINE_SCHEMA)
    DIR/images/<shard>.parquet       the ledger: one row per image handled (schema.IMAGE_SCHEMA)
    DIR/summary.json

A shard (one batch of images) is written cells first, quarantine second and ledger last, each file
atomically (written under a temporary name, then renamed). A shard is committed exactly when its
ledger file exists. A run killed half-way leaves at most cells/quarantine files whose ledger is
missing; `open_output` deletes those orphans before the next run, and the images they held are not
in the ledger, so the next run ingests them again. Nothing is lost and nothing is counted twice.

Paths may be local or any URI pyarrow.fs understands (s3://, gs://, a shared mount), so that a
multi-node run can write to shared storage; `pipeline.locations.resolve` is the one place a path
becomes (fs, path).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.locations import absolute, join, join_uri, resolve


def new_shard_id(run_id: str) -> str:
    """A shard name unique across runs and workers: '<run_id>-<random hex>'."""
    return f"{run_id}-{uuid.uuid4().hex[:12]}"


def _list_parquet(fs: pafs.FileSystem, folder: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def _shard_of(path: str) -> str:
    return path.rsplit("/", 1)[-1][: -len(".parquet")]


def write_table_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write a Parquet file so that readers see either nothing or the whole file."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(table, tmp, filesystem=fs, compression="zstd")
    fs.move(tmp, path)


@dataclass(frozen=True)
class OutputState:
    """What an ingest output already holds: committed images keyed by path, and cleanup done."""

    known: dict[str, str]  # image -> source sha256, for every image in the ledger
    orphans_removed: int


def open_output(out: str | Path) -> OutputState:
    """Create the output folders, remove orphans of interrupted runs, and read the ledger."""
    fs, base = resolve(out)
    for sub in (schema.CELLS_DIR, schema.QUARANTINE_DIR, schema.IMAGES_DIR):
        fs.create_dir(join(base, sub), recursive=True)
    committed = {_shard_of(p) for p in _list_parquet(fs, join(base, schema.IMAGES_DIR))}
    removed = 0
    for sub in (schema.CELLS_DIR, schema.QUARANTINE_DIR, schema.IMAGES_DIR):
        infos = fs.get_file_info(pafs.FileSelector(join(base, sub)))
        for info in infos:
            stale_tmp = ".tmp-" in info.base_name
            orphan = info.base_name.endswith(".parquet") and _shard_of(info.path) not in committed
            if info.type == pafs.FileType.File and (stale_tmp or orphan):
                fs.delete_file(info.path)
                removed += 1
    known: dict[str, str] = {}
    ledger = read_table(out, schema.IMAGES_DIR, columns=[schema.IMAGE, schema.SOURCE_SHA256])
    for image, sha in zip(ledger.column(0).to_pylist(), ledger.column(1).to_pylist()):
        known[image] = sha
    return OutputState(known, removed)


def drop_duplicate_commits(out: str | Path) -> int:
    """Un-commit the second commit of an image; returns how many images were committed twice.

    On a cluster a batch can run twice: its worker's node is lost after the batch committed but
    before Ray got its result (or the result's block is lost with the node), and Ray runs the batch
    again under a new shard id. Shards are visited in name order and an (image, content hash) seen
    in an earlier ledger is dropped from the later shard: the whole shard when all its images
    were, its ledger first (a crash half-way leaves orphans that `open_output` removes); else
    the shard's files are rewritten without those images, cells and quarantine before the ledger.
    Call it when no writer runs (before and after an ingest), like `open_output`.
    """
    fs, base = resolve(out)
    seen: set[tuple[str, str | None]] = set()
    dropped = 0
    for ledger_path in _list_parquet(fs, join(base, schema.IMAGES_DIR)):
        shard = _shard_of(ledger_path)
        ledger = pq.read_table(ledger_path, filesystem=fs)
        keys = list(zip(ledger.column(schema.IMAGE).to_pylist(), ledger.column(schema.SOURCE_SHA256).to_pylist()))
        twice = {image for image, sha in keys if (image, sha) in seen}
        seen.update(keys)
        if not twice:
            continue
        dropped += len(twice)
        others = [join(base, sub, f"{shard}.parquet") for sub in (schema.CELLS_DIR, schema.QUARANTINE_DIR)]
        if len(twice) == len(keys):
            fs.delete_file(ledger_path)
            for path in others:
                if fs.get_file_info(path).type == pafs.FileType.File:
                    fs.delete_file(path)
            continue
        for path in [*others, ledger_path]:
            if fs.get_file_info(path).type == pafs.FileType.File:
                table = pq.read_table(path, filesystem=fs)
                keep = pc.invert(pc.is_in(table.column(schema.IMAGE), pa.array(sorted(twice))))
                write_table_atomic(fs, path, table.filter(keep))
    return dropped


def write_shard(out: str | Path, shard: str, cells: pa.Table, quarantine: pa.Table, ledger: pa.Table) -> None:
    """Commit one shard: cells, then quarantine, then the ledger that marks it done."""
    fs, base = resolve(out)
    if cells.num_rows:
        write_table_atomic(fs, join(base, schema.CELLS_DIR, f"{shard}.parquet"), cells)
    if quarantine.num_rows:
        write_table_atomic(fs, join(base, schema.QUARANTINE_DIR, f"{shard}.parquet"), quarantine)
    write_table_atomic(fs, join(base, schema.IMAGES_DIR, f"{shard}.parquet"), ledger)


_SCHEMAS = {
    schema.CELLS_DIR: schema.CELL_SCHEMA,
    schema.QUARANTINE_DIR: schema.QUARANTINE_SCHEMA,
    schema.IMAGES_DIR: schema.IMAGE_SCHEMA,
}


def read_table(out: str | Path, sub: str = schema.CELLS_DIR, columns: list[str] | None = None) -> pa.Table:
    """One table of an ingest output (cells, quarantine or images) as a single Arrow table."""
    fs, base = resolve(out)
    files = _list_parquet(fs, join(base, sub))
    table_schema = _SCHEMAS[sub]
    if not files:
        empty = table_schema.empty_table()
        return empty.select(columns) if columns else empty
    return pads.dataset(files, schema=table_schema, filesystem=fs, format="parquet").to_table(columns=columns)


def shard_files(out: str | Path, sub: str = schema.CELLS_DIR) -> list[str]:
    """Locations (local paths or URIs, like `out`) of the committed Parquet files of one table.

    Each names its filesystem, so a worker elsewhere can `resolve` it (an S3 key alone could not).
    """
    fs, base = resolve(out)
    return [join_uri(absolute(out), sub, p.rsplit("/", 1)[-1]) for p in _list_parquet(fs, join(base, sub))]


def column_bytes(files: list[str], column: str) -> tuple[int, int]:
    """(uncompressed bytes of `column`, rows) over the Parquet `files`, from their footers only."""
    total = rows = 0
    for uri in files:
        fs, path = resolve(str(uri))
        with fs.open_input_file(path) as fh:
            meta = pq.ParquetFile(fh).metadata
        rows += meta.num_rows
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            total += sum(group.column(c).total_uncompressed_size for c in range(group.num_columns)
                         if group.column(c).path_in_schema == column)  # fmt: skip
    return total, rows


def images_identity(pairs) -> str:
    """A short hash of a set of input images, from (image, content sha256) pairs in any order."""
    digest = hashlib.sha256()
    for image, sha in sorted((str(i), str(s)) for i, s in pairs):
        digest.update(f"{image}:{sha}\n".encode())
    return digest.hexdigest()[:16]


def ledger_identity(out: str | Path) -> str:
    """`images_identity` of every image an ingest output holds (its ledger)."""
    ledger = read_table(out, schema.IMAGES_DIR, columns=[schema.IMAGE, schema.SOURCE_SHA256])
    return images_identity(zip(ledger.column(0).to_pylist(), ledger.column(1).to_pylist()))


PATH_COLUMN = "path"


def read_shards(batch: dict, columns: list[str] | None = None) -> pa.Table:
    """Batch function: the rows of the Parquet shard files named in batch["path"], nulls kept.

    Jobs build their datasets as `from_items(paths).map_batches(read_shards, ...)` instead of
    `read_parquet`, whose file-listing task asks for a whole CPU and can starve beside actors or
    training workers that hold the others (seen hanging on 2 cores).
    """
    tables = []
    for uri in batch[PATH_COLUMN]:
        fs, path = resolve(str(uri))
        tables.append(pq.read_table(path, filesystem=fs, columns=columns))
    if tables:
        return pa.concat_tables(tables)
    empty = schema.CELL_SCHEMA.empty_table()
    return empty.select(columns) if columns else empty
