"""Model checkpoints: a plain state dict plus a JSON of everything inference needs.

A checkpoint directory holds
    model.pt      the model's state dict (tensors only: loadable with torch.load(weights_only=True))
    meta.json     a `CheckpointMeta`: architecture, input size, normalisation, the model's classes
                  (taxonomy names, in output order) and taxonomy version, the crop settings the
                  training crops were cut with, the training data's identity, the split, the epoch
    optimizer.pt  (training checkpoints only) optimizer state, for resuming
so that `allray infer` can rebuild the model and cut crops exactly as training saw them. This module
is the only reader and writer of meta.json: everything else gets a typed `CheckpointMeta`.
Checkpoints are written to a local folder (Ray Train uploads it); they are read from a local folder
or a URI (s3://.../best), straight into memory.

meta.json format 2 adds `class_names` and `taxonomy_version`; a format-1 file (every checkpoint
before the differential: `classes` {"0": other, "1": lymphoblast}) reads as a binary model.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import taxonomy
from pipeline.config import CropSettings
from pipeline.locations import is_file, join_uri, read_bytes, read_text
from pipeline.redact import redact

MODEL_FILE = "model.pt"
META_FILE = "meta.json"
OPTIMIZER_FILE = "optimizer.pt"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
# What format 1 wrote: the meaning of the one logit's two sides.
LEGACY_CLASSES = {"0": "other white cell", "1": "lymphoblast"}
REQUIRED_META = ("format_version", "arch", "model_name", "image_size", "mean", "std", "crop_settings")


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or does not match what it is used for."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint's model is and was trained on (meta.json, typed)."""

    arch: str  # what --arch asked for (a family alias or a registry name)
    model_name: str  # the concrete registry name (pipeline.models)
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_settings: CropSettings
    class_names: tuple[str, ...] = taxonomy.BINARY_CLASSES  # model output order, taxonomy names
    taxonomy_version: int = taxonomy.TAXONOMY_VERSION
    data_id: str | None = None
    fold: int = 0
    epoch: int | None = None
    params: int | None = None
    cells: tuple[str, ...] = ()  # the ingest outputs trained on
    split: dict[str, Any] | None = None  # the split's summary (pipeline.splits.Split.summary + fold)
    metrics: dict[str, Any] | None = None  # the epoch's metrics row
    confusion: list[list[int]] | None = None  # validation confusion matrix, rows true, columns predicted

    def __post_init__(self) -> None:
        if not isinstance(self.crop_settings, CropSettings):
            raise TypeError(f"crop_settings must be a CropSettings, got {type(self.crop_settings).__name__}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "cells", tuple(self.cells))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 channels, got {self.mean!r}, {self.std!r}")
        if self.class_names != taxonomy.BINARY_CLASSES:
            taxonomy.check_model_classes(self.class_names)

    @property
    def n_outputs(self) -> int:
        """1 for a binary model (one logit, sigmoid = P(lymphoblast)), else the number of classes (softmax)."""
        return 1 if self.class_names == taxonomy.BINARY_CLASSES else len(self.class_names)

    @property
    def is_binary(self) -> bool:
        return self.n_outputs == 1

    def replace(self, **changes: Any) -> CheckpointMeta:
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """meta.json text (format FORMAT_VERSION)."""
        data = {"format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            data[f.name] = getattr(self, f.name)
        data["crop_settings"] = json.loads(self.crop_settings.to_json())
        for key in ("mean", "std", "class_names", "cells"):
            data[key] = list(data[key])
        return json.dumps(data, indent=2, default=str) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = META_FILE) -> CheckpointMeta:
        """A CheckpointMeta from meta.json text (format 1 or 2); CheckpointError naming `where`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{where} is damaged: {err}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} is not a JSON object: not an allray checkpoint")
        missing = [k for k in REQUIRED_META if k not in data]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}: not an allray checkpoint of this version")
        version = data["format_version"]
        if version not in READABLE_FORMATS:
            raise CheckpointError(f"{where}: checkpoint format {version} is not supported (want {FORMAT_VERSION})")
        if version == 1:
            if data.get("classes", LEGACY_CLASSES) != LEGACY_CLASSES:
                raise CheckpointError(f"{where}: format-1 classes {data.get('classes')!r} are not the binary ones")
            data["class_names"] = list(taxonomy.BINARY_CLASSES)
            data["taxonomy_version"] = taxonomy.TAXONOMY_VERSION
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        try:
            kwargs["crop_settings"] = CropSettings.from_json(json.dumps(data["crop_settings"]))
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: not usable: {err}") from None


def save_checkpoint(directory: Path, model_state: dict, meta: CheckpointMeta,
                    optimizer_state: dict | None = None) -> None:  # fmt: skip
    """Write model.pt, meta.json and optionally optimizer.pt."""
    if not isinstance(meta, CheckpointMeta):
        raise TypeError(f"meta must be a CheckpointMeta, got {type(meta).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model_state.items()}, directory / MODEL_FILE)
    # no URI credentials in a checkpoint (pipeline/redact.py)
    (directory / META_FILE).write_text(json.dumps(redact(json.loads(meta.to_json())), indent=2) + "\n")
    if optimizer_state is not None:
        torch.save(optimizer_state, directory / OPTIMIZER_FILE)


def read_meta(directory: str | Path) -> CheckpointMeta:
    """The CheckpointMeta of a checkpoint (local folder or URI)."""
    path = join_uri(directory, META_FILE)
    if not is_file(path):
        raise CheckpointError(f"{directory} is not an allray checkpoint: {META_FILE} is missing")
    return CheckpointMeta.from_json(read_text(path), where=str(path))


def _load_tensors(path: str) -> dict:
    """torch.load of a local file or URI, tensors only."""
    return torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=True)


def load_checkpoint(directory: str | Path) -> tuple[torch.nn.Module, CheckpointMeta]:
    """The model of a checkpoint (local folder or URI), weights loaded and in eval mode, and its meta.

    Refuses (CheckpointError) a checkpoint whose weights do not fit its declared architecture.
    """
    from pipeline.models import build_model

    meta = read_meta(directory)
    path = join_uri(directory, MODEL_FILE)
    if not is_file(path):
        raise CheckpointError(f"{directory}: {MODEL_FILE} is missing")
    try:
        state = _load_tensors(path)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise CheckpointError(f"{path} is damaged or not a state dict: {err}") from None
    model = build_model(meta.model_name, image_size=meta.image_size, num_classes=meta.n_outputs)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"{path} does not match architecture {meta.model_name} at {meta.image_size} px "
            f"with {meta.n_outputs} output(s): {first}"
        ) from None
    model.eval()
    return model, meta


def load_training_state(directory: str | Path) -> tuple[dict, dict | None, CheckpointMeta]:
    """(model state, optimizer state or None, meta) of a training checkpoint, for resuming."""
    meta = read_meta(directory)
    state = _load_tensors(join_uri(directory, MODEL_FILE))
    opt_path = join_uri(directory, OPTIMIZER_FILE)
    opt = _load_tensors(opt_path) if is_file(opt_path) else None
    return state, opt, meta
