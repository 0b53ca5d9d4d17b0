"""Dataset layouts: turn a source folder into a list of `ImageTask`s, one per input image.

Layouts (see ../shared/docs/data-formats.md):
- folders:  SRC/<patient_id>/<sample_id>/*.{jpg,png,tif,...}; a flat folder (each image its own
            sample, patient unknown); a manifest CSV `image,patient_id,sample_id[,label]` overrides.
- allidb1:  ImNNN_L.jpg full smears, L = 1 (ALL patient) / 0 (healthy), optional xyc/ImNNN_L.xyc
            blast centroids (whitespace separated x y).
- allidb2:  ImNNN_L.* single-cell images, L = 1 lymphoblast / 0 healthy: no detection.
- classfolders: SRC/<class>/<image> (CellaVision exports, torchvision's ImageFolder): each image one
            centred cell of the folder's class (a name of pipeline/taxonomy.py); auto-detected when
            there are at least two top folders and every one is a known class.
Cell labels for any smear layout may come from a labels CSV `image,x,y[,r],label[,class]`; the
manifest may carry `label` and/or `class` too. A `class` (a taxonomy name) takes precedence over
`label` (0/1 = other/lymphoblast). Every label travels as a class name (points, default_label).

The source folder and the CSVs may be local paths or URIs (s3://, gs://, file://): they are listed
and read through pipeline.locations, and each task's `path` is a location a Ray worker can read.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline import taxonomy
from pipeline.io import has_image_extension
from pipeline.locations import absolute, is_dir, is_file, join_uri, read_bytes, resolve, walk_tree
from pipeline.source_checks import (
    LINE,
    RowReport,
    check_label_row,
    check_manifest_row,
    match_rows,
    normalise_image_path,
)

FORMATS = ("auto", "folders", "manifest", "allidb1", "allidb2", "classfolders")
CLASS_COLUMN = "class"  # optional column of --labels and the manifest: a taxonomy class name
LABEL_SOURCE_CLASS_FOLDER = "class_folder"
_ALLIDB_NAME = re.compile(r"^Im(\d{3})_([01])\.[A-Za-z]+$")

SMEAR = "smear"  # full smear image: detect cells
SINGLE_CELL = "single_cell"  # the whole image is one centred cell


class SourceError(ValueError):
    """A source folder, manifest or labels file that cannot be read as asked."""


@dataclass(frozen=True)
class ImageTask:
    """One input image and everything known about it before it is read.

    `points_json` lists known cells as [[x, y, r_or_null, class], ...] (source pixels, class a
    taxonomy name); `default_label` is the class of a detected cell that matches no point ("other"
    for images of healthy patients, the folder's class for a class-folder image, else None = unknown).
    """

    path: str  # absolute path or URI of the file (pipeline.locations)
    image: str  # path relative to the source root, POSIX
    patient_id: str | None
    sample_id: str | None
    kind: str = SMEAR
    points_json: str | None = None
    label_source: str | None = None
    default_label: str | None = None  # a taxonomy class name
    # A single-cell image's source's scales per image size ("WxH": um/px, pipeline.single_cell), else None
    pooled_scales: dict[str, float] | None = None

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
    links_not_followed: list[dict] = field(default_factory=list)  # {"path", "reason"} per link not read
    row_counts: dict = field(default_factory=dict)  # manifest/labels rows matched and unmatched
    row_problems: list[str] = field(default_factory=list)  # `path:N: what is wrong` per row not used


def discover_images(
    src: str | Path,
    fmt: str = "auto",
    manifest: str | Path | None = None,
    labels: str | Path | None = None,
    follow_links: bool = False,
    allow_unmatched: bool = False,
) -> Discovery:
    """Every image file under `src` (a local folder or a URI) as an ImageTask, with patients,
    samples and labels resolved.

    Symlinks to folders are not descended into and links to files outside `src` are not read,
    unless `follow_links` (loops are cut either way); each is listed with its reason. Manifest and
    labels rows with invalid values or naming no image fail with their line numbers, unless
    `allow_unmatched` (then they are skipped and counted)."""
    if fmt not in FORMATS:
        raise SourceError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    root = absolute(src)
    if not is_dir(root):
        raise SourceError(f"source folder {src} does not exist or is not a folder")
    if fmt == "manifest" and manifest is None:
        raise SourceError("--format manifest needs --manifest CSV (columns image,patient_id,sample_id[,label])")
    listing = _list_source(root, follow_links)
    files = listing.images
    if not files:
        raise SourceError(
            f"no images found under {src} (looked for {', '.join(('jpg', 'jpeg', 'png', 'tif', 'tiff', 'bmp'))}, any case)"
        )
    if fmt == "auto":
        fmt = _detect_format(root, listing, manifest)
    if fmt == "allidb2":
        tasks = [_allidb2_task(root, rel) for rel in files]
    elif fmt == "classfolders":
        tasks = [_classfolder_task(root, rel) for rel in files]
    elif fmt == "allidb1":
        others = set(listing.others)
        tasks = [_allidb1_task(root, rel, others) for rel in files]
    else:
        tasks = [_folder_task(root, rel) for rel in files]
    reports: list[RowReport] = []
    images = {t.image for t in tasks}
    if manifest is not None:
        rows, report = read_manifest_checked(manifest, images)
        reports.append(report)
        tasks = _apply_manifest(tasks, rows)
    if labels is not None:
        points, report = read_labels_checked(labels, images)
        reports.append(report)
        tasks = _apply_labels(tasks, points)
    problems = [p for r in reports for p in r.problems]
    if problems and not allow_unmatched:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise SourceError(f"{len(problems)} row(s) cannot be used: {'; '.join(problems[:5])}{more}; fix them, or "
                          "pass --allow-unmatched to skip such rows (they are counted in the summary)")  # fmt: skip
    counts = {k: v for r in reports for k, v in r.counts().items()}
    return Discovery(tasks, fmt, listing.others, listing.links, counts, problems)


@dataclass(frozen=True)
class _Listing:
    """What a source folder holds, as paths relative to it: images, other files, folders."""

    images: list[str]
    others: list[str]  # not images (notes, .xyc files, ...): reported as ignored
    folders: set[str]
    links: list[dict] = field(default_factory=list)  # links not followed, with the reason


def _list_source(root: str, follow_links: bool = False) -> _Listing:
    tree = walk_tree(root, follow_links)
    files, folders = tree.files, tree.folders

    def visible(rel: str) -> bool:  # hidden files and folders (.DS_Store, .ipynb_checkpoints) are not inputs
        return not any(part.startswith(".") for part in rel.split("/"))

    files = [f for f in files if visible(f)]
    images = [f for f in files if has_image_extension(f.rsplit("/", 1)[-1])]
    others = [f for f in files if not has_image_extension(f.rsplit("/", 1)[-1])]
    links = [{"path": rel, "reason": reason} for rel, reason in tree.links_not_followed if visible(rel)]
    return _Listing(images, others, {d for d in folders if visible(d)}, links)


def _detect_format(root: str, listing: _Listing, manifest: str | Path | None) -> str:
    if manifest is not None:
        return "manifest"
    if _looks_like_classfolders(listing):
        return "classfolders"
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


def _looks_like_classfolders(listing: _Listing) -> bool:
    """Every image sits in a top folder, there are at least two, and each is named after a known class."""
    tops = {f.split("/", 1)[0] for f in listing.images}
    if any("/" not in f for f in listing.images) or len(tops) < 2:
        return False
    return all(taxonomy.lookup(t) not in (None, taxonomy.ROOT) for t in tops)


def _classfolder_task(src: str, rel: str) -> ImageTask:
    """SRC/<class>/[...]/<image>: one centred cell of the folder's class (no detection)."""
    parts = PurePosixPath(rel).parts
    if len(parts) < 2:
        raise SourceError(f"{join_uri(src, rel)}: a class-folder layout wants SRC/<class>/<image>; move it into "
                          "its class folder")  # fmt: skip
    try:
        cls = taxonomy.parse_class(parts[0], where=f"class folder {join_uri(src, parts[0])}")
    except taxonomy.UnknownClassError as err:
        raise SourceError(str(err)) from None
    return ImageTask(
        path=join_uri(src, rel),
        image=rel,
        patient_id=None,
        sample_id=PurePosixPath(rel).stem,
        kind=SINGLE_CELL,
        label_source=LABEL_SOURCE_CLASS_FOLDER,
        default_label=cls,
    )


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
                points = [[x, y, None, taxonomy.LYMPHOBLAST] for x, y in read_xyc(join_uri(src, xyc))]
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
        default_label=taxonomy.OTHER,
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
        default_label=taxonomy.class_of_binary(label),
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


def _decode_csv(path: str | Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SourceError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}; saved as Latin-1 or another "
            "legacy encoding?): save it as UTF-8 (in Excel: CSV UTF-8)"
        ) from None


def _read_csv(path: str | Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV as dicts of stripped strings, each with its line number under LINE."""
    if not is_file(path):
        raise SourceError(f"CSV file {path} does not exist")
    reader = csv.DictReader(io.StringIO(_decode_csv(path, read_bytes(path)), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)}; header is {','.join(header)}")
    rows = []
    for row in reader:
        values = {k.strip(): (v or "").strip() for k, v in row.items() if k and k != LINE}
        values[LINE] = reader.line_num
        rows.append(values)
    return rows


def read_manifest(path: str | Path) -> dict[str, dict[str, str]]:
    """Manifest rows keyed by image path (relative to the source, POSIX; Windows '\\' accepted), each
    with its class name (or "") under CLASS_COLUMN."""
    rows = _read_csv(path, ("image", "patient_id", "sample_id"))
    return {normalise_image_path(r["image"]): _with_class(r, path) for r in rows}


def read_manifest_checked(path: str | Path, images: set[str]) -> tuple[dict[str, dict[str, str]], RowReport]:
    """The manifest rows that are valid and name an image in `images`, and the report of the others."""
    report = RowReport(str(path), "manifest")
    valid = []
    for row in _read_csv(path, ("image", "patient_id", "sample_id")):
        problem = check_manifest_row(row) or _class_problem(row, path)
        if problem:
            report.add(row, problem)
        else:
            valid.append(row)
    matched = match_rows(valid, images, report)
    return {normalise_image_path(r["image"]): _with_class(r, path) for r in matched}, report


def row_class(row: dict[str, str], where: str) -> str | None:
    """The class name a CSV row gives: its `class` (a taxonomy name) if set, else its `label`
    (0 -> other, 1 -> lymphoblast), else None; SourceError naming `where` and the value."""
    value = row.get(CLASS_COLUMN) or row.get("label") or ""
    if not value and row.get("kind") == "smudge":
        return taxonomy.SMUDGE  # synth truth written before the class column: a ruptured cell, never counted
    if not value:
        return None
    if value.replace(".", "", 1).isdigit() and not row.get(CLASS_COLUMN):
        try:
            value = str(int(float(value)))  # "1.0" -> "1"
        except ValueError:
            pass
    try:
        return taxonomy.parse_class(value, where)
    except taxonomy.UnknownClassError as err:
        raise SourceError(str(err)) from None


def _where(row: dict[str, str], path: str | Path) -> str:
    return f"{path}:{row.get(LINE, '?')}"


def _with_class(row: dict[str, str], path: str | Path) -> dict[str, str]:
    row[CLASS_COLUMN] = row_class(row, _where(row, path)) or ""
    return row


def _class_problem(row: dict[str, str], path: str | Path) -> str | None:
    """What is wrong with a row's class column (an unknown class), or None."""
    if not row.get(CLASS_COLUMN):
        return None
    name = taxonomy.lookup(row[CLASS_COLUMN])
    if name is None or name == taxonomy.ROOT:
        return (
            f"unknown cell class {row[CLASS_COLUMN]!r}; known classes: {', '.join((*taxonomy.CLASSES, 'other', 'wbc'))}"
        )
    return None


def _require_label_or_class(path: str | Path, rows: list[dict[str, str]]) -> None:
    if rows and "label" not in rows[0] and CLASS_COLUMN not in rows[0]:
        raise SourceError(
            f"{path}: needs a label (0/1) or a class column; header is {','.join(k for k in rows[0] if k != LINE)}"
        )


def _label_points(rows: list[dict[str, str]], path: str | Path) -> dict[str, list[list]]:
    out: dict[str, list[list]] = defaultdict(list)
    for row in rows:
        r = float(row["r"]) if row.get("r") else None
        cls = row_class(row, _where(row, path))
        if cls is None:
            raise SourceError(f"{_where(row, path)}: the row has neither a label nor a class")
        out[normalise_image_path(row["image"])].append([float(row["x"]), float(row["y"]), r, cls])
    return dict(out)


def _labels_rows(path: str | Path) -> list[dict[str, str]]:
    rows = _read_csv(path, ("image", "x", "y"))
    _require_label_or_class(path, rows)
    return rows


def read_labels(path: str | Path) -> dict[str, list[list]]:
    """Labelled cell centres per image: {image: [[x, y, r_or_None, class], ...]} (class a taxonomy name);
    SourceError naming the line of the first invalid row."""
    rows = _labels_rows(path)
    for row in rows:
        problem = check_label_row(row) or _class_problem(row, path)
        if problem:
            raise SourceError(f"{_where(row, path)}: {problem} (x, y, r finite numbers; label 0 or 1, or a class)")
    return _label_points(rows, path)


def read_labels_checked(path: str | Path, images: set[str]) -> tuple[dict[str, list[list]], RowReport]:
    """The labelled cell centres of the rows that are valid and name an image in `images`, and the
    report of the others (a row whose image exists but whose cell is not detected is matched)."""
    report = RowReport(str(path), "labels")
    valid = []
    for row in _labels_rows(path):
        problem = check_label_row(row) or _class_problem(row, path)
        if problem:
            report.add(row, problem)
        else:
            valid.append(row)
    return _label_points(match_rows(valid, images, report), path), report


def _apply_manifest(tasks: list[ImageTask], manifest: dict[str, dict[str, str]]) -> list[ImageTask]:
    out = []
    for task in tasks:
        row = manifest.get(task.image)
        if row is None:
            out.append(task)
            continue
        changes = dict(task.__dict__, patient_id=row["patient_id"] or None, sample_id=row["sample_id"] or None)
        cls = row.get(CLASS_COLUMN) or None
        if cls is not None:
            if task.kind == SINGLE_CELL:
                changes.update(default_label=cls, label_source="manifest")
            elif cls == taxonomy.OTHER and task.points_json is None:
                # A healthy patient's smear: every white cell in it is a healthy cell.
                changes.update(default_label=taxonomy.OTHER, label_source="manifest")
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
