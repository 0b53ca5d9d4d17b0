"""One geometry per ingest output: the settings that shape its cells and crops, written once.

The first run into an output writes DIR/geometry.json (the run's CropSettings: crop window and
size, scale override, detection settings). Every later run must ask for the same, or it fails
before any work with the setting that differs and what to do. Settings that do not change a cell
(--workers, --images-per-shard, --labels) are not part of it. An output written before this file
existed takes its geometry from the settings its cells were cut with.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import schema
from pipeline.config import CropSettings
from pipeline.locations import is_file, join_uri, read_json, write_json

# The option that sets each CropSettings field, for messages; detection settings have none.
OPTION_OF = {"crop_um": "--crop-um", "crop_size": "--crop-size", "um_per_pixel": "--um-per-pixel"}


class GeometryMismatchError(ValueError):
    """A run asks for other cell-shaping settings than its output folder was cut with."""


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(stored: dict, asked: dict) -> list[str]:
    """'--crop-um 24.0 (asked: 30.0)' for every setting that differs, detection settings by name."""
    old, new = _flatten(stored), _flatten(asked)
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            name = OPTION_OF.get(key, f"detection setting {key}")
            out.append(f"{name} {old.get(key)!r} (this run: {new.get(key)!r})")
    return out


def stored_geometry(out: str | Path) -> dict | None:
    """The geometry an output was cut with: geometry.json, else its cells' settings, else None."""
    path = join_uri(out, schema.GEOMETRY_FILE)
    if is_file(path):
        return read_json(path)["crop_settings"]
    from pipeline.store import read_table

    cells = read_table(out, columns=[schema.INGEST_SETTINGS])
    seen = set(cells.column(0).unique().to_pylist()) if cells.num_rows else set()
    if not seen:
        return None
    if len(seen) > 1:
        raise GeometryMismatchError(
            f"{out} already holds crops cut with {len(seen)} different settings (made before allray kept one "
            "geometry per output): re-cut it with --rebuild, or ingest into a new --out"
        )
    return json.loads(seen.pop())


NEW, SAME, REBUILD = "new", "same", "rebuild"


def check_geometry(out: str | Path, crops: CropSettings, rebuild: bool = False) -> str:
    """NEW (nothing recorded yet), SAME, or REBUILD (asked; everything in `out` is to be re-cut);
    GeometryMismatchError when `out` was cut with other settings. Writes nothing: call
    `write_geometry` once the run is sure to start. Call it while holding the output's lock."""
    asked = json.loads(crops.to_json())
    stored = stored_geometry(out)
    if rebuild:
        return REBUILD
    if stored is not None and stored != asked:
        diff = "; ".join(differences(stored, asked))
        raise GeometryMismatchError(
            f"{out} was cut with other settings than this run: {diff}. Ingest into a new --out, or pass --rebuild "
            f"to re-cut every image of {out} with the new settings"
        )
    return SAME if is_file(join_uri(out, schema.GEOMETRY_FILE)) else NEW


def write_geometry(out: str | Path, crops: CropSettings) -> None:
    """Record `crops` as the output's one geometry (atomically)."""
    write_json(out, schema.GEOMETRY_FILE, {"crop_settings": json.loads(crops.to_json())})
