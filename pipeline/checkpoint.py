"""Model checkpoints: a plain state dict plus a JSON of everything inference needs.

A checkpoint directory holds
    model.pt      the model's state dict (tensors only: loadable with torch.load(weights_only=True))
    meta.json     architecture, input size, normalisation, class meaning, the crop settings the
                  training crops were cut with, the training data's identity, the split, the epoch
    optimizer.pt  (training checkpoints only) optimizer state, for resuming
so that `allray infer` can rebuild the model and cut crops exactly as training saw them.
Checkpoints are written to a local folder (Ray Train uploads it); they are read from a local folder
or a URI (s3://.../best), straight into memory.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from pipeline.locations import is_file, join_uri, read_bytes, read_text
from pipeline.redact import redact

MODEL_FILE = "model.pt"
META_FILE = "meta.json"
OPTIMIZER_FILE = "optimizer.pt"
FORMAT_VERSION = 1
CLASSES = {"0": "other white cell", "1": "lymphoblast"}
REQUIRED_META = ("format_version", "arch", "model_name", "image_size", "mean", "std", "crop_settings", "classes")


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or does not match what it is used for."""


def save_checkpoint(directory: Path, model_state: dict, meta: dict, optimizer_state: dict | None = None) -> None:
    """Write model.pt, meta.json (with format_version and classes added) and optionally optimizer.pt."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model_state.items()}, directory / MODEL_FILE)
    meta = {"format_version": FORMAT_VERSION, "classes": CLASSES, **meta}
    (directory / META_FILE).write_text(json.dumps(redact(meta), indent=2, default=str) + "\n")  # no URI credentials
    if optimizer_state is not None:
        torch.save(optimizer_state, directory / OPTIMIZER_FILE)


def read_meta(directory: str | Path) -> dict:
    """meta.json of a checkpoint (local folder or URI), checked for the fields inference needs."""
    path = join_uri(directory, META_FILE)
    if not is_file(path):
        raise CheckpointError(f"{directory} is not an allray checkpoint: {META_FILE} is missing")
    try:
        meta = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is damaged: {err}") from None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not an allray checkpoint of this version")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta['format_version']} is not supported (want {FORMAT_VERSION})")
    return meta


def _load_tensors(path: str) -> dict:
    """torch.load of a local file or URI, tensors only."""
    return torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=True)


def load_checkpoint(directory: str | Path) -> tuple[torch.nn.Module, dict]:
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
    model = build_model(meta["model_name"], image_size=meta["image_size"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"{path} does not match architecture {meta['model_name']} at {meta['image_size']} px: {first}"
        ) from None
    model.eval()
    return model, meta


def load_training_state(directory: str | Path) -> tuple[dict, dict | None, dict]:
    """(model state, optimizer state or None, meta) of a training checkpoint, for resuming."""
    meta = read_meta(directory)
    state = _load_tensors(join_uri(directory, MODEL_FILE))
    opt_path = join_uri(directory, OPTIMIZER_FILE)
    opt = _load_tensors(opt_path) if is_file(opt_path) else None
    return state, opt, meta
