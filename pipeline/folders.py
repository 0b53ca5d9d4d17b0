"""What kind of allray folder a location is, so a command given the wrong kind says so in one line.

Each command makes one kind of folder and reads others: ingest makes an ingest output (cells),
train a run, infer a report. Passing one where another is wanted is an ordinary mistake (`allray
infer --model cells`); without this check it ended deep inside a command as a KeyError or, worse,
as work done on the wrong input (a run's curves.png ingested as a smear). Kinds are told apart by
the files each command writes and nothing else does.
"""

from __future__ import annotations

import enum
from pathlib import Path

import pyarrow.fs as pafs

from pipeline import schema
from pipeline.locations import file_type, is_dir, is_file, join_uri
from pipeline.redact import redact_text


class FolderKind(enum.Enum):
    """The kinds of folder allray makes, plus what is none of them (missing, another folder, a file)."""

    MISSING = "missing"
    INGEST_OUTPUT = "an ingest output (made by `allray ingest`)"
    RUN = "a training run (made by `allray train`)"
    CHECKPOINT = "a checkpoint folder (model.pt + meta.json)"
    REPORT = "an inference report (made by `allray infer`)"
    OTHER = "a folder"  # slides, or anything else: what the command itself then reads
    FILE = "a file, not a folder"


CHECKPOINT_FILE = "meta.json"  # pipeline.checkpoint.META_FILE, named here without importing torch
RUN_FILES = ("metrics.jsonl", "split.json")  # train writes these at the start of a run
REPORT_FILES = ("report.html", "patients.csv")

WANTS = {  # what each option takes, and how to get one, for the messages
    "model": "a run folder made by `allray train` (runs/<date-time>) or one of its checkpoints (<run>/<arch>/best)",
    "cells": "an ingest output made by `allray ingest SRC --out DIR` (it holds cells/ and images/)",
    "slides": "a folder of smear images (patient/sample/*.png, a flat folder, ALL-IDB) or an ingest output",
    "source": "a folder of smear images (patient/sample/*.png, a flat folder, ALL-IDB)",
    "ingest_out": "a new folder or an earlier ingest output",
    "train_out": "a new folder for the run (or a run to continue, with --resume)",
}


def folder_kind(location: str | Path) -> FolderKind:
    """The kind of folder at `location` (a local path or a URI), told by the files it holds."""
    kind = file_type(location)
    if kind == pafs.FileType.NotFound:
        return FolderKind.MISSING
    if kind == pafs.FileType.File:
        return FolderKind.FILE
    if is_dir(join_uri(location, schema.IMAGES_DIR)) and is_dir(join_uri(location, schema.CELLS_DIR)):
        return FolderKind.INGEST_OUTPUT
    if is_file(join_uri(location, CHECKPOINT_FILE)):
        return FolderKind.CHECKPOINT
    if any(is_file(join_uri(location, name)) for name in RUN_FILES):
        return FolderKind.RUN
    if any(is_file(join_uri(location, name)) for name in REPORT_FILES):
        return FolderKind.REPORT
    return FolderKind.OTHER


def wrong_kind_message(what: str, location: str | Path, kind: FolderKind, wants: str) -> str:
    """One line: `what LOCATION is KIND: what wants WANTS[wants]` (credentials redacted)."""
    found = "does not exist" if kind == FolderKind.MISSING else f"is {kind.value}"
    return redact_text(f"{what} {location} {found}: {what} wants {WANTS[wants]}")


def require_kind(what: str, location: str | Path, allowed: tuple[FolderKind, ...], wants: str) -> FolderKind:
    """The kind of `location`; ValueError (one line, saying what `what` wants) when it is not in `allowed`."""
    kind = folder_kind(location)
    if kind not in allowed:
        raise ValueError(wrong_kind_message(what, location, kind, wants))
    return kind
