"""Dataset layouts: turn a source folder into a list of `ImageTask`s, one per input image.

Layouts (see ../shared/docs/data-formats.md):
- folders:  SRC/<patient_id>/<sample_id>/*.{jpg,png,tif,...}; a flat folder (each image its own
            sample, patient unknown); a manifest CSV `image,patient_id,sample_id[,label]` overrides.
- allidb1:  ImNNN_L.jpg full smears, L = 1 (ALL patient) / 0 (healthy), optional xyc/ImNNN_L.xyc
            blast centroids (whitespace separated x y).
- allidb2:  ImNNN_L.* single-cell images, L = 1 lymphoblast / 0 healthy: no detection.
Cell labels for any smear layout may come from a labels CSV `image,x,y[,r],label`.

The source folder and the CSVs may be local paths or URIs (s3://, gs://, file://): they are listed
and read through pipeline.locations, and each task's `path` is a location a Ray worker can read.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.io import has_image_extension
from pipeline.locations import absolute, is_dir, is_file, join_uri, list_tree, read_bytes, resolve

FORMATS = ("auto", "folders", "manifest", "allidb1", "allidb2")
_ALLIDB_NAME = re.compile(r"^Im(\d{3})_([01])\.[A-Za-z]+$")

SMEAR = "smear"  # full smear image: detect cells
SINGLE_CELL = "single_cell"  # the whole image is one centred cell


class SourceError(ValueError):
    """A source folder, manifest or labels file that cannot be read as asked."""


@dataclass(frozen=True)
class ImageTask:
    """One input image and everything known about it before it is read.

    `points_json` lists known cells as [[x, y, r_or_null, label], ...] (source pixels);
    `default_label` is the label of a detected cell that matches no point (0 for images of healthy
    patients, else None = unknown).
    """

    path: str  # absolute path or URI of the file (pipeline.locations)
    image: str  # path relative to the source root, POSIX
    patient_id: str | None
    sample_id: str | None
    kind: str = SMEAR
    points_json: str | None = None
    label_source: str | None = None
    default_label: int | None = None

    def to_json(self) -> str:
        """This task as a JSON object (how tasks travel through a Ray Dataset)."""
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> ImageTask:
        """A task back from `to_json` output."""
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Discovery:
    """What a source folder holds: the images to ingest and what was ignored (not images)."""

    tasks: list[ImageTask]
    format: str
    ignored: list[str]


def discover_images(
    src: str | Path,
    fmt: str = "auto",
    manifest: str | Path | None = None,
    labels: str | Path | None = None,
) -> Discovery:
    """Every image file under `src` (a local folder or a URI) as an ImageTask, with patients,
    samples and labels resolved."""
    if fmt not in FORMATS:
        raise SourceError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    root = absolute(src)
    if not is_dir(root):
        raise SourceError(f"source folder {src} does not exist or is not a folder")
    if fmt == "manifest" and manifest is None:
        raise SourceError("--format manifest needs --manifest CSV (columns image,patient_id,sample_id[,label])")
    listing = _list_source(root)
    files = listing.images
    if not files:
        raise SourceError(
            f"no images found under {src} (looked for {', '.join(('jpg', 'jpeg', 'png', 'tif', 'tiff', 'bmp'))}, any case)"
        )
    if fmt == "auto":
        fmt = _detect_format(root, listing, manifest)
    if fmt == "allidb2":
        tasks = [_allidb2_task(root, rel) for rel in files]
    elif fmt == "allidb1":
        others = set(listing.others)
        tasks = [_allidb1_task(root, rel, others) for rel in files]
    else:
        tasks = [_folder_task(root, rel) for rel in files]
    if manifest is not None:
        tasks = _apply_manifest(tasks, read_manifest(manifest))
    if labels is not None:
        tasks = _apply_labels(tasks, read_labels(labels))
    return Discovery(tasks, fmt, listing.others)


@dataclass(frozen=True)
class _Listing:
    """What a source folder holds, as paths relative to it: images, other files, folders."""

    images: list[str]
    others: list[str]  # not images (notes, .xyc files, ...): reported as ignored
    folders: set[str]


def _list_source(root: str) -> _Listing:
    files, folders = list_tree(root)

    def visible(rel: str) -> bool:  # hidden files and folders (.DS_Store, .ipynb_checkpoints) are not inputs
        return not any(part.startswith(".") for part in rel.split("/"))

    files = [f for f in files if visible(f)]
    images = [f for f in files if has_image_extension(f.rsplit("/", 1)[-1])]
    others = [f for f in files if not has_image_extension(f.rsplit("/", 1)[-1])]
    return _Listing(images, others, {d for d in folders if visible(d)})


def _detect_format(root: str, listing: _Listing, manifest: str | Path | None) -> str:
    if manifest is not None:
        return "manifest"
    names = [PurePosixPath(f).name for f in listing.images]
    if all(_ALLIDB_NAME.match(n) for n in names):
        if "xyc" in listing.folders:
            return "allidb1"
        exts = {PurePosixPath(n).suffix.lower() for n in names}
        if exts <= {".tif", ".tiff"}:
            return "allidb2"
        # Re-encoded copies: ALL-IDB2 cells are small single-cell images, ALL-IDB1 full smears.
        return "allidb2" if _max_side(join_uri(root, listing.images[0])) <= 400 else "allidb1"
    return "folders"


def _max_side(location: str) -> int:
    from PIL import Image

    try:
        fs, path = resolve(location)
        with fs.open_input_file(path) as fh, Image.open(fh) as im:  # reads the header, not the whole file
            return max(im.size)
    except Exception:  # noqa: BLE001 - an unreadable first file says nothing about the layout
        return 10_000


def _folder_task(src: str, rel: str) -> ImageTask:
    parts = PurePosixPath(rel).parts
    if len(parts) >= 3:
        patient, sample = parts[0], parts[1]
    elif len(parts) == 2:
        patient, sample = parts[0], parts[0]
    else:
        patient, sample = None, PurePosixPath(rel).stem
    return ImageTask(path=join_uri(src, rel), image=rel, patient_id=patient, sample_id=sample)


def _allidb_label(rel: str) -> int:
    match = _ALLIDB_NAME.match(PurePosixPath(rel).name)
    if not match:
        raise SourceError(f"{rel}: not an ALL-IDB file name (expected ImNNN_L.ext with L = 0 or 1)")
    return int(match.group(2))


def _allidb1_task(src: str, rel: str, other_files: set[str]) -> ImageTask:
    """ALL-IDB1: each image its own sample, patient unknown; blasts from xyc, others healthy."""
    image_label = _allidb_label(rel)
    stem = PurePosixPath(rel).stem
    points = None
    if image_label == 1:
        beside = (PurePosixPath(rel).parent / "xyc" / f"{stem}.xyc").as_posix()
        for xyc in (beside, f"xyc/{stem}.xyc"):
            if xyc in other_files:
                points = [[x, y, None, 1] for x, y in read_xyc(join_uri(src, xyc))]
                break
    if image_label == 1 and points is None:
        # An ALL image without its centroid file: which cells are blasts is unknown.
        return ImageTask(join_uri(src, rel), rel, None, stem)
    return ImageTask(
        path=join_uri(src, rel),
        image=rel,
        patient_id=None,
        sample_id=stem,
        points_json=json.dumps(points) if points else None,
        label_source="xyc",
        default_label=0,
    )


def _allidb2_task(src: str, rel: str) -> ImageTask:
    label = _allidb_label(rel)
    return ImageTask(
        path=join_uri(src, rel),
        image=rel,
        patient_id=None,
        sample_id=PurePosixPath(rel).stem,
        kind=SINGLE_CELL,
        label_source="filename",
        default_label=label,
    )


def read_xyc(path: str | Path) -> list[tuple[float, float]]:
    """Blast centroids of an ALL-IDB1 .xyc file (local or URI): one `x y` pair per line, any whitespace."""
    points = []
    for n, line in enumerate(read_bytes(path).decode("utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            points.append((float(fields[0]), float(fields[1])))
        except (ValueError, IndexError):
            raise SourceError(f"{path}:{n}: expected 'x y' centroid, got {line!r}") from None
    return points


def _read_csv(path: str | Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not is_file(path):
        raise SourceError(f"CSV file {path} does not exist")
    reader = csv.DictReader(io.StringIO(read_bytes(path).decode("utf-8-sig"), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)}; header is {','.join(header)}")
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def read_manifest(path: str | Path) -> dict[str, dict[str, str]]:
    """Manifest rows keyed by image path (relative to the source, POSIX)."""
    rows = _read_csv(path, ("image", "patient_id", "sample_id"))
    return {PurePosixPath(r["image"]).as_posix(): r for r in rows}


def read_labels(path: str | Path) -> dict[str, list[list]]:
    """Labelled cell centres per image: {image: [[x, y, r_or_None, label], ...]}."""
    out: dict[str, list[list]] = defaultdict(list)
    for n, row in enumerate(_read_csv(path, ("image", "x", "y", "label")), start=2):
        if row.get("kind") == "smudge":
            continue  # a ruptured cell (synth truth): no label, never counted
        try:
            r = float(row["r"]) if row.get("r") else None
            label = int(float(row["label"]))
            if label not in (0, 1):
                raise ValueError
            out[PurePosixPath(row["image"]).as_posix()].append([float(row["x"]), float(row["y"]), r, label])
        except ValueError:
            raise SourceError(f"{path}:{n}: bad row {row} (x, y, r numbers; label 0 or 1)") from None
    return dict(out)


def _apply_manifest(tasks: list[ImageTask], manifest: dict[str, dict[str, str]]) -> list[ImageTask]:
    out = []
    for task in tasks:
        row = manifest.get(task.image)
        if row is None:
            out.append(task)
            continue
        changes = dict(task.__dict__, patient_id=row["patient_id"] or None, sample_id=row["sample_id"] or None)
        label = row.get("label", "")
        if label in ("0", "1"):
            if task.kind == SINGLE_CELL:
                changes.update(default_label=int(label), label_source="manifest")
            elif label == "0" and task.points_json is None:
                # A healthy patient's smear: every white cell in it is a healthy cell.
                changes.update(default_label=0, label_source="manifest")
        out.append(ImageTask(**changes))
    return out


def _apply_labels(tasks: list[ImageTask], labels: dict[str, list[list]]) -> list[ImageTask]:
    out = []
    for task in tasks:
        points = labels.get(task.image)
        if points is not None and task.kind == SMEAR:
            task = ImageTask(**dict(task.__dict__, points_json=json.dumps(points), label_source="labels_csv"))
        out.append(task)
    return out
