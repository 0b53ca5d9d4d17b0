"""Which cells a model trains and validates on: the labelled index, cell keys, side selection.

The driver reads only the small index columns of the cell tables (no crops), splits them, and hands
the key sets to `SelectCells`, a batch callable that keeps one side's rows as they stream past.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema, taxonomy
from pipeline.config import CropSettings
from pipeline.store import PATH_COLUMN, column_bytes, read_shards, read_table, shard_files

INDEX_COLUMNS = [schema.PATIENT_ID, schema.IMAGE, schema.CELL_ID, schema.LABEL, schema.CELL_CLASS, schema.KIND,
                 schema.SOURCE_SHA256, schema.INGEST_SETTINGS]  # fmt: skip
KEY = "key"
# A training read block gathers shards until it holds about this many cells (at most MIX_MAX_FILES
# shards): see shard_groups.
MIX_ROWS = 1024
MIX_MAX_FILES = 32


def cell_key(sha: str, cell_id: int) -> str:
    """A cell's identity across ingest outputs: its source image's content hash and its index."""
    return f"{sha}#{int(cell_id)}"


@dataclass(frozen=True)
class CellIndex:
    """The trainable cells of one or more ingest outputs (with a class, not smudge), without crops.

    CELL_CLASS is filled for every row: an ingest output written before the column existed gets it
    from its binary LABEL (1 lymphoblast, 0 other).
    """

    table: pa.Table  # INDEX_COLUMNS + KEY, one row per trainable cell; CELL_CLASS as plain strings
    files: list[str]  # every committed cell shard file, for the Dataset to read
    crop_settings: CropSettings  # the single ingest setting all these crops were cut with
    data_id: str  # a hash of what was trained on (keys and labels), for the checkpoint
    n_unlabelled: int
    n_smudge: int
    crop_bytes_per_cell: float  # mean stored crop size over `files`, to size a cache of the crops


def read_cell_index(cell_dirs: list[str]) -> CellIndex:
    """Index of the trainable cells of `cell_dirs`; ValueError when there is nothing to train on."""
    tables, files = [], []
    for d in cell_dirs:
        found = shard_files(d)
        if not found:
            raise ValueError(f"{d} holds no cells: run `allray ingest SRC --out {d}` first")
        files += order_by_content(found)
        tables.append(read_table(d, columns=INDEX_COLUMNS))
    table = pa.concat_tables(tables)
    settings = set(pc.unique(table.column(schema.INGEST_SETTINGS)).to_pylist())
    if len(settings) != 1:
        raise ValueError(
            f"the cells of {', '.join(cell_dirs)} were cut with {len(settings)} different ingest settings; "
            "train on cells ingested with one setting (same --crop-um, --crop-size, detector)"
        )
    classes = cell_classes(table)
    table = table.set_column(table.schema.get_field_index(schema.CELL_CLASS), schema.CELL_CLASS,
                             pa.array(classes, pa.string()))  # fmt: skip
    labelled = pc.is_valid(table.column(schema.CELL_CLASS))
    smudge = pc.equal(table.column(schema.KIND), schema.KIND_SMUDGE)
    keep = pc.and_(labelled, pc.invert(smudge))
    n_unlabelled = int(table.num_rows - pc.sum(labelled).as_py()) if table.num_rows else 0
    n_smudge = int(pc.sum(pc.and_(labelled, smudge)).as_py() or 0)
    table = table.filter(keep)
    keys = [cell_key(s, c) for s, c in zip(table.column(schema.SOURCE_SHA256).to_pylist(),
                                           table.column(schema.CELL_ID).to_pylist())]  # fmt: skip
    # Rows in the order of their cells, not of the files they were read from: splits drawn from
    # row positions then depend on the cells alone (the same images ingested twice split alike).
    table = table.append_column(KEY, pa.array(keys, pa.string())).sort_by(KEY)
    if table.num_rows == 0:
        raise ValueError(
            f"found no labelled cells in {', '.join(cell_dirs)}: ingest with --labels, a manifest with a label or "
            "class column, an ALL-IDB layout or class folders (SRC/<class>/<image>)"
        )
    digest = hashlib.sha256()
    for key, cls in sorted(zip(keys, table.column(schema.CELL_CLASS).to_pylist())):
        digest.update(f"{key}:{_digest_label(cls)}\n".encode())
    crop_bytes, n_rows = column_bytes(files, schema.CROP)
    return CellIndex(table, files, CropSettings.from_json(settings.pop()), digest.hexdigest()[:16], n_unlabelled,
                     n_smudge, crop_bytes / max(1, n_rows))  # fmt: skip


def order_by_content(files: list[str]) -> list[str]:
    """Shard files in the order of the cells they hold (the least cell key of each), not of their
    names: a shard's name carries its ingest run and a random part, so the same images ingested
    again, or copied elsewhere, would otherwise be grouped and shuffled into other batches, and a
    seeded training run would not repeat."""

    def least_key(uri: str) -> str:
        table = read_shards({PATH_COLUMN: [uri]}, [schema.SOURCE_SHA256, schema.CELL_ID])
        keys = [cell_key(s, c) for s, c in zip(table.column(schema.SOURCE_SHA256).to_pylist(),
                                               table.column(schema.CELL_ID).to_pylist()) if s is not None]  # fmt: skip
        return min(keys, default="\uffff")  # a file without cells holds nothing to train on: last

    return [uri for _, uri in sorted((least_key(uri), uri) for uri in files)]


def cell_classes(table: pa.Table) -> list[str | None]:
    """Each row's class name: CELL_CLASS where set, else the class of its binary LABEL (old outputs)."""
    classes = table.column(schema.CELL_CLASS).to_pylist()
    labels = table.column(schema.LABEL).to_pylist()
    return [c if c is not None else taxonomy.class_of_binary(b) for c, b in zip(classes, labels)]


def _digest_label(cls: str) -> str:
    """What a cell's label adds to data_id: its binary label where the class is blast/other (so a binary
    data set keeps the identity it had before classes), else the class name."""
    return str(taxonomy.binary_label(cls)) if cls in taxonomy.BINARY_CLASSES else cls


def shard_groups(files: list[str], rows_per_file: float, seed: int,
                 rows: int = MIX_ROWS, max_files: int = MIX_MAX_FILES) -> list[list[str]]:  # fmt: skip
    """`files` in a random order (fixed by `seed`) cut into groups of about `rows` cells each, for
    training read blocks that each mix many shards.

    A shard holds the cells of a few images, often of one patient, and for class folders of one
    class: read a shard a block, batches drawn from a shuffle buffer of a few blocks hold a few
    patients or classes at a time. A block of randomly chosen shards, its rows shuffled
    (select_cells' `shuffle_seed`), mixes them the way a full row shuffle would, and stays a map
    over files: a block lost with a node is rebuilt from its own files alone (Ray Data's all-to-all
    random_shuffle is not: the lineage of every block then holds the whole shuffle, and a training
    run that lost a node that way hung).
    """
    if not files:
        return []
    per_group = max(1, min(max_files, math.ceil(rows / max(1.0, rows_per_file))))
    order = np.random.default_rng(seed).permutation(len(files))
    n_groups = math.ceil(len(files) / per_group)
    return [[files[i] for i in chunk] for chunk in np.array_split(order, n_groups)]


def select_cells(
    batch: dict[str, np.ndarray], targets: dict[str, int], shuffle_seed: int | None = None
) -> dict[str, np.ndarray]:
    """Batch function: of the shard files in batch["path"], the rows whose cell key is in `targets`,
    as {crop, label} columns; label is the cell's training target from `targets` (the binary label of
    a one-logit model, or the bit mask of the classes a cell's label allows, see pipeline.multiclass).
    With `shuffle_seed`, the rows come in a random order fixed by the seed and the cells read."""
    table = read_shards(batch, [schema.SOURCE_SHA256, schema.CELL_ID, schema.CROP])
    keyed = [cell_key(s, c) for s, c in zip(table.column(schema.SOURCE_SHA256).to_pylist(),
                                            table.column(schema.CELL_ID).to_pylist())]  # fmt: skip
    mask = np.fromiter((k in targets for k in keyed), dtype=bool, count=len(keyed))
    kept = table.filter(pa.array(mask))
    labels = np.fromiter((targets[k] for k, m in zip(keyed, mask) if m), dtype=np.int64, count=int(mask.sum()))
    crops = kept.column(schema.CROP).to_numpy(zero_copy_only=False)
    if shuffle_seed is not None:
        # The order follows from the cells alone (their keys), not from where or under which names
        # their files lie: the same cells and seed give the same block wherever they were ingested.
        kept_keys = np.array([k for k, m in zip(keyed, mask) if m], dtype=object)
        canonical = np.argsort(kept_keys, kind="stable")
        digest = zlib.crc32("\n".join(kept_keys[canonical]).encode())
        order = canonical[np.random.default_rng([shuffle_seed, digest]).permutation(labels.size)]
        crops, labels = crops[order], labels[order]
    return {schema.CROP: crops, schema.LABEL: labels}
