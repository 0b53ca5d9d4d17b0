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

One version per image path: a run that finds an image's content changed (or a file quarantined
before now readable) commits the new version with a ledger row whose `supersedes` names every shard
holding an earlier row of that path. Readers (`read_table`, `shard_files`) see only current versions:
rows of committed shards that no committed ledger row supersedes (and, for outputs written before
`supersedes` existed, only the newest shard of a path). `compact` then rewrites the old shards
without the replaced rows (cells and quarantine before the ledger), so a crash at any point leaves
the same current view, and the next run finishes the clean-up.

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

    known: dict[str, str]  # image -> source sha256 of its current version, for every image in the ledger
    orphans_removed: int
    versions: dict[str, list[str]] | None = None  # image -> every shard holding a ledger row of it


def _ledger_keys(table: pa.Table) -> pa.Array:
    """'image<NUL>shard' per row: the key of one committed version of an image."""
    return pc.binary_join_element_wise(table.column(schema.IMAGE), pc.fill_null(table.column(schema.SHARD), ""),
                                       "\x00")  # fmt: skip


def _replaced_pairs(ledger: pa.Table) -> set[tuple[str, str]]:
    """(image, shard) of every version some ledger row supersedes."""
    replaced: set[tuple[str, str]] = set()
    if schema.SUPERSEDES in ledger.column_names:
        for image, olds in zip(ledger.column(schema.IMAGE).to_pylist(), ledger.column(schema.SUPERSEDES).to_pylist()):
            replaced.update((image, old) for old in olds or ())
    return replaced


def current_versions(ledger: pa.Table) -> pa.Table:
    """The ledger rows no commit replaced: per image, the rows of shards that no row supersedes,
    and of those (for outputs from before `supersedes`) the newest shard's row."""
    if ledger.num_rows == 0:
        return ledger
    images = ledger.column(schema.IMAGE).to_pylist()
    shards = ledger.column(schema.SHARD).to_pylist()
    replaced = _replaced_pairs(ledger)
    newest: dict[str, str] = {}
    for image, shard in zip(images, shards):
        if (image, shard) not in replaced and (shard or "") >= newest.get(image, ""):
            newest[image] = shard or ""
    keep = [newest.get(image) == (shard or "") for image, shard in zip(images, shards)]
    return ledger.filter(pa.array(keep, pa.bool_()))


def _current_keys(out: str | Path) -> tuple[pa.Array, int]:
    """(keys of the current versions, number of committed ledger rows) of an output."""
    ledger = _read_all(out, schema.IMAGES_DIR, [schema.IMAGE, schema.SHARD, schema.SUPERSEDES])
    return _ledger_keys(current_versions(ledger)), ledger.num_rows


def open_output(out: str | Path) -> OutputState:
    """Create the output folders, remove orphans of interrupted runs, and read the ledger.

    Call it only while holding the output's lock (pipeline.lock): it deletes files that no ledger
    commits, which a second live writer may be about to commit."""
    from pipeline.lock import OutputLockedError, locked_by_other

    holder = locked_by_other(str(out))
    if holder is not None:
        raise OutputLockedError(f"{out} is being written by another allray run (host {holder.get('host')}, "
                                f"pid {holder.get('pid')}): not touching it")  # fmt: skip
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
    versions: dict[str, list[str]] = {}
    everything = _read_all(out, schema.IMAGES_DIR, [schema.IMAGE, schema.SHARD])
    for image, shard in zip(everything.column(0).to_pylist(), everything.column(1).to_pylist()):
        versions.setdefault(image, []).append(shard)
    return OutputState(known, removed, versions)


def compact(out: str | Path) -> int:
    """Rewrite the shards that hold replaced versions without them; returns the ledger rows removed.

    Each shard's cells and quarantine are rewritten before its ledger (each file atomically), and a
    shard left with no current row is deleted ledger last, so readers see the same current versions
    at every step and a crash leaves work the next call finishes. Call it while holding the lock."""
    fs, base = resolve(out)
    current, _ = _current_keys(out)
    removed = 0
    for ledger_path in _list_parquet(fs, join(base, schema.IMAGES_DIR)):
        shard = _shard_of(ledger_path)
        ledger = pq.read_table(ledger_path, filesystem=fs)
        keep = pc.is_in(_ledger_keys(ledger), value_set=current)
        n_keep = pc.sum(keep).as_py() or 0
        if n_keep == ledger.num_rows:
            continue
        removed += ledger.num_rows - n_keep
        for sub in (schema.CELLS_DIR, schema.QUARANTINE_DIR):
            path = join(base, sub, f"{shard}.parquet")
            if fs.get_file_info(path).type != pafs.FileType.File:
                continue
            table = pq.read_table(path, filesystem=fs)
            kept = table.filter(pc.is_in(_ledger_keys(table), value_set=current))
            if kept.num_rows == 0:
                fs.delete_file(path)
            elif kept.num_rows < table.num_rows:
                write_table_atomic(fs, path, kept)
        if n_keep == 0:
            fs.delete_file(ledger_path)
        else:
            write_table_atomic(fs, ledger_path, ledger.filter(keep))
    return removed


def clear_output(out: str | Path) -> None:
    """Delete every shard of an output (ledgers first: an interrupted clear leaves only orphans)."""
    fs, base = resolve(out)
    for sub in (schema.IMAGES_DIR, schema.CELLS_DIR, schema.QUARANTINE_DIR, schema.ATTEMPTS_DIR):
        for info in fs.get_file_info(pafs.FileSelector(join(base, sub), allow_not_found=True)):
            if info.type == pafs.FileType.File:
                fs.delete_file(info.path)


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
    # A version a later commit replaced is no longer an image's commit: the same bytes coming back
    # (A, then B, then A again) are a new version, not a duplicate.
    replaced = _replaced_pairs(_read_all(out, schema.IMAGES_DIR, [schema.IMAGE, schema.SHARD, schema.SUPERSEDES]))
    for ledger_path in _list_parquet(fs, join(base, schema.IMAGES_DIR)):
        shard = _shard_of(ledger_path)
        ledger = pq.read_table(ledger_path, filesystem=fs)
        keys = [(image, sha) for image, sha in zip(ledger.column(schema.IMAGE).to_pylist(),
                                                   ledger.column(schema.SOURCE_SHA256).to_pylist())
                if (image, shard) not in replaced]  # fmt: skip
        twice = {image for image, sha in keys if (image, sha) in seen}
        seen.update(keys)
        if not twice:
            continue
        dropped += len(twice)
        others = [join(base, sub, f"{shard}.parquet") for sub in (schema.CELLS_DIR, schema.QUARANTINE_DIR)]
        if len(twice) == ledger.num_rows:
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


def _read_all(out: str | Path, sub: str, columns: list[str] | None = None) -> pa.Table:
    """Every row of one table's files, committed or not, current or replaced."""
    fs, base = resolve(out)
    files = _list_parquet(fs, join(base, sub))
    table_schema = _SCHEMAS[sub]
    if not files:
        empty = table_schema.empty_table()
        return empty.select(columns) if columns else empty
    return pads.dataset(files, schema=table_schema, filesystem=fs, format="parquet").to_table(columns=columns)


def read_table(out: str | Path, sub: str = schema.CELLS_DIR, columns: list[str] | None = None) -> pa.Table:
    """One table of an ingest output (cells, quarantine or images) as a single Arrow table: the rows
    of committed shards that belong to the current version of their image (see the module doc)."""
    wanted = list(columns) if columns else None
    extra = [c for c in (schema.IMAGE, schema.SHARD) if wanted is not None and c not in wanted]
    table = _read_all(out, sub, wanted + extra if wanted is not None else None)
    if table.num_rows:
        current, _ = _current_keys(out)
        table = table.filter(pc.is_in(_ledger_keys(table), value_set=current))
    return table.select(wanted) if wanted is not None else table


class ReplacedVersionsError(ValueError):
    """An output still holds replaced versions in its shard files (an ingest is running or was cut short)."""


def shard_files(out: str | Path, sub: str = schema.CELLS_DIR) -> list[str]:
    """Locations (local paths or URIs, like `out`) of the committed Parquet files of one table.

    Each names its filesystem, so a worker elsewhere can `resolve` it (an S3 key alone could not).
    Whole files are handed out, so an output whose files still hold replaced versions (an ingest
    running, or one cut short before its clean-up) is refused rather than read twice.
    """
    fs, base = resolve(out)
    current, n_rows = _current_keys(out)
    if len(current) != n_rows:
        raise ReplacedVersionsError(
            f"{out} holds replaced versions of some images that are not cleaned up yet (an ingest into it is "
            f"running or was interrupted): wait for it, or run `allray ingest` with the same --out again"
        )
    committed = {_shard_of(p) for p in _list_parquet(fs, join(base, schema.IMAGES_DIR))}
    return [join_uri(absolute(out), sub, p.rsplit("/", 1)[-1]) for p in _list_parquet(fs, join(base, sub))
            if _shard_of(p) in committed]  # fmt: skip


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


def note_duplicate_content(out: str | Path, groups: list[list[str]]) -> None:
    """Add 'same content as OTHER' to the ledger note of every image in `groups` (each ledger file
    rewritten atomically, only when a note changes). Call it while holding the lock."""
    notes = {image: "same content as " + ", ".join(o for o in group if o != image) for group in groups
             for image in group}  # fmt: skip
    if not notes:
        return
    fs, base = resolve(out)
    for ledger_path in _list_parquet(fs, join(base, schema.IMAGES_DIR)):
        ledger = pq.read_table(ledger_path, filesystem=fs)
        old = ledger.column(schema.NOTE).to_pylist()
        new = []
        for image, note in zip(ledger.column(schema.IMAGE).to_pylist(), old):
            extra = notes.get(image)
            new.append(note if not extra or (note and extra in note) else "; ".join(filter(None, [note, extra])))
        if new != old:
            i = ledger.schema.get_field_index(schema.NOTE)
            noted = ledger.set_column(i, ledger.schema.field(i), pa.array(new, pa.string()))
            write_table_atomic(fs, ledger_path, noted)


def duplicate_content(out: str | Path) -> list[list[str]]:
    """Groups (sorted image paths) of current images that share one content hash."""
    ledger = read_table(out, schema.IMAGES_DIR, columns=[schema.IMAGE, schema.SOURCE_SHA256])
    by_sha: dict[str, list[str]] = {}
    for image, sha in zip(ledger.column(0).to_pylist(), ledger.column(1).to_pylist()):
        if sha:
            by_sha.setdefault(sha, []).append(image)
    return sorted(sorted(v) for v in by_sha.values() if len(v) > 1)


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
