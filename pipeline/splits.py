"""Train/validation splits that keep every patient (or image) on one side, stratified by label.

Labels are stratum codes 0..K-1 (the binary label, or the index of a cell's class): every class is
balanced over the sides and folds.

A split that puts cells of one patient into both training and validation leaks and inflates
accuracy, so the default is a patient split; without patient ids it falls back to images and says
so. Everything is deterministic for a seed and independent of the order of the input rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPLIT_MODES = ("patient", "image", "random")
_RESTARTS = 8  # random starting splits per call; the best after local search wins
_MAX_SWAP_GROUPS = 300  # pairwise swaps are O(G^2): only worth it (and cheap) for few groups


@dataclass(frozen=True)
class Split:
    """A train/validation split of cells and what it was grouped by."""

    mode: str  # the mode asked for
    mode_used: str  # the mode that actually grouped the cells (patient may fall back to image)
    note: str | None  # why the mode changed, or what else a reader of the metrics should know
    train_idx: np.ndarray  # (n_train,) int64 cell indices, ascending
    val_idx: np.ndarray  # (n_val,) int64
    train_groups: tuple[str, ...]  # patient or image ids on each side; () for mode "random"
    val_groups: tuple[str, ...]

    def summary(self) -> dict[str, str | int | None]:
        """The scalar facts of the split, for a run's metrics."""
        return {
            "split_mode": self.mode,
            "split_mode_used": self.mode_used,
            "split_note": self.note,
            "n_train": int(self.train_idx.size),
            "n_val": int(self.val_idx.size),
            "n_train_groups": len(self.train_groups),
            "n_val_groups": len(self.val_groups),
        }


def _check_fraction(val_fraction: float) -> float:
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
    return float(val_fraction)


def _check_labels(labels: Sequence[int], n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels has shape {y.shape}, expected ({n},) like the groups")
    bad = sorted({repr(v) for v in y.tolist() if isinstance(v, bool) or not isinstance(v, (int, np.integer))
                  or v < 0})  # fmt: skip
    if bad:
        raise ValueError(f"labels must be class codes 0, 1, ...; got {', '.join(bad[:5])} (drop unlabelled cells)")
    return y.astype(np.int64)


def _group_counts(groups: Sequence[str], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(names (G,), inverse (N,), counts (G, K) cells of each class per group; K >= 2)."""
    g = np.asarray([str(v) for v in groups])
    y = _check_labels(labels, g.size)
    names, inverse = np.unique(g, return_inverse=True)
    counts = np.zeros((names.size, max(2, int(y.max()) + 1 if y.size else 2)), dtype=np.int64)
    np.add.at(counts, (inverse, y), 1)
    return names, inverse, counts


def _cost(val: np.ndarray, val_has: np.ndarray, train_has: np.ndarray, totals: np.ndarray,
          possible: np.ndarray, f: float) -> np.ndarray:  # fmt: skip
    """Badness of candidate splits: (..., K) val cell counts and class presence -> (...,)."""
    n = totals.sum()
    dev = ((val.sum(-1) / n - f) ** 2).astype(np.float64)
    for c in range(totals.size):
        if totals[c]:
            dev = dev + (val[..., c] / totals[c] - f) ** 2
    missing = ((val_has == 0) & possible).sum(-1) + ((train_has == 0) & possible).sum(-1)
    empty = (val.sum(-1) == 0) | (val.sum(-1) == n)
    return dev + 1e3 * missing + 1e6 * empty


def _improve(in_val: np.ndarray, counts: np.ndarray, f: float) -> tuple[np.ndarray, float]:
    """Local search from `in_val` (G,) bool: the best move or pair swap, until none helps."""
    has = (counts > 0).astype(np.int64)
    totals, possible = counts.sum(0), has.sum(0) >= 2  # a class can be on both sides
    in_val = in_val.copy()
    for _ in range(10 * len(counts) + 10):
        val, val_has = counts[in_val].sum(0), has[in_val].sum(0)
        train_has = has.sum(0) - val_has
        now = _cost(val, val_has, train_has, totals, possible, f)
        sign = np.where(in_val, -1, 1)[:, None]  # moving a val group out, a train group in
        dh = sign * has
        moved = _cost(val + sign * counts, val_has + dh, train_has - dh, totals, possible, f)
        best, best_cost = ("move", int(moved.argmin())), moved.min()
        vi, ti = np.flatnonzero(in_val), np.flatnonzero(~in_val)
        if len(counts) <= _MAX_SWAP_GROUPS and vi.size and ti.size:
            dc = counts[ti][None] - counts[vi][:, None]  # (Gv, Gt, 2): val - a + b
            dh = has[ti][None] - has[vi][:, None]
            swapped = _cost(val + dc, val_has + dh, train_has - dh, totals, possible, f)
            if swapped.min() < best_cost:
                a, b = np.unravel_index(int(swapped.argmin()), swapped.shape)
                best, best_cost = ("swap", (vi[a], ti[b])), swapped.min()
        if best_cost >= now - 1e-12:
            return in_val, float(now)
        for g in np.atleast_1d(best[1]):
            in_val[g] = ~in_val[g]
    return in_val, float(now)


def _split_singletons(y: np.ndarray, f: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool val mask: a stratified random split of individual cells."""
    in_val = np.zeros(y.size, dtype=bool)
    for c in range(max(2, int(y.max()) + 1)):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(f * idx.size)
        if idx.size >= 2:
            k = min(max(k, 1), idx.size - 1)
        in_val[idx[:k]] = True
    if not in_val.any():
        in_val[rng.integers(y.size)] = True
    elif in_val.all():
        in_val[rng.integers(y.size)] = False
    return in_val


def split_groups(
    groups: Sequence[str], labels: Sequence[int], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): no group on both sides, each class's val share near `val_fraction`,
    both classes on both sides where the groups allow it."""
    f = _check_fraction(val_fraction)
    names, inverse, counts = _group_counts(groups, labels)
    if names.size < 2:
        raise ValueError(f"need at least 2 groups to split without leaking, got {names.size}")
    rng = np.random.default_rng(seed)
    if (counts.sum(1) == 1).all():
        group_val = _split_singletons(counts.argmax(1), f, rng)
    else:
        sizes, best = counts.sum(1), (math.inf, None)
        for _ in range(_RESTARTS):
            order = rng.permutation(names.size)
            cut = int(np.abs(np.cumsum(sizes[order]) - f * sizes.sum()).argmin()) + 1
            start = np.zeros(names.size, dtype=bool)
            start[order[:cut]] = True
            in_val, cost = _improve(start, counts, f)
            if cost < best[0]:
                best = (cost, in_val)
        group_val = best[1]
    cell_val = group_val[inverse]
    return np.flatnonzero(~cell_val), np.flatnonzero(cell_val)


def kfold_groups(
    groups: Sequence[str], labels: Sequence[int], k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train_idx, val_idx) folds: every group in exactly one val fold, class shares balanced."""
    names, inverse, counts = _group_counts(groups, labels)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= names.size:
        raise ValueError(f"k must be an int from 2 to the group count ({names.size}), got {k!r}")
    rng = np.random.default_rng(seed)
    sizes, totals = counts.sum(1), np.maximum(counts.sum(0), 1)
    order = rng.permutation(names.size)
    order = order[np.argsort(-sizes[order], kind="stable")]  # big groups first, ties at random
    fold_counts = np.zeros((k, counts.shape[1]), dtype=np.int64)
    fold_of = np.empty(names.size, dtype=np.int64)
    for placed, g in enumerate(order):
        # candidates[j] = fold counts (k, 2) if g went to fold j
        candidates = fold_counts[None] + np.eye(k, dtype=np.int64)[:, :, None] * counts[g]
        shares = candidates / totals
        cost = shares.var(axis=1).sum(-1) + (candidates.sum(-1) / sizes.sum()).var(axis=1)
        empty = np.flatnonzero(fold_counts.sum(1) == 0)
        if empty.size >= names.size - placed:  # as many groups left as empty folds: fill them
            cost[np.setdiff1d(np.arange(k), empty)] = np.inf
        tie = np.flatnonzero(np.isclose(cost, cost.min()))
        fold = tie[fold_counts[tie].sum(1).argmin()]
        fold_of[g] = fold
        fold_counts[fold] += counts[g]
    cell_fold = fold_of[inverse]
    return [(np.flatnonzero(cell_fold != j), np.flatnonzero(cell_fold == j)) for j in range(k)]


def _patient_or_none(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def merge_groups_by_content(groups: Sequence[str], contents: Sequence[str | None]) -> tuple[list[str], int]:
    """Groups joined wherever two of them hold cells of the same content (the same image bytes filed
    under two names or two patients), so that no copy of an image lands on both sides of a split.

    Returns (merged group per cell, number of groups merged away). A merged group is named by its
    first member in sorted order, joined with '+'."""
    parent: dict[str, str] = {}

    def root(g: str) -> str:
        while parent.setdefault(g, g) != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    first_group: dict[str, str] = {}
    for g, c in zip(groups, contents):
        root(g)
        if c is None or c == "":
            continue
        other = first_group.setdefault(str(c), g)
        a, b = root(other), root(g)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for g in parent:
        members.setdefault(root(g), []).append(g)
    names = {r: "+".join(sorted(m)) if len(m) > 1 else r for r, m in members.items()}
    merged = [names[root(g)] for g in groups]
    return merged, len(parent) - len(members)


def cell_groups(
    patient_ids: Sequence[str | None],
    images: Sequence[str],
    mode: str = "patient",
    contents: Sequence[str | None] | None = None,
) -> tuple[list[str], str, str | None]:
    """(group id per cell, mode actually used, note) for a split or k-fold in `mode`.

    "patient" falls back to "image" when no cell has a patient id or every image is its own
    patient, and groups cells that lack a patient id by their image; the note says which
    happened. "random" makes every cell its own group. With `contents` (each cell's source
    content hash), patient and image groups that share content are merged (see
    `merge_groups_by_content`), and the note says how many.
    """
    groups, mode_used, note = _cell_groups(patient_ids, images, mode)
    if contents is None or mode_used == "random":
        return groups, mode_used, note
    if len(contents) != len(images):
        raise ValueError(f"contents and images differ in length: {len(contents)}, {len(images)}")
    groups, n_merged = merge_groups_by_content(groups, contents)
    if n_merged:
        joined = f"{n_merged} {mode_used} group(s) merged with another holding the same image content"
        note = f"{note}; {joined}" if note else joined
    return groups, mode_used, note


def _cell_groups(
    patient_ids: Sequence[str | None], images: Sequence[str], mode: str = "patient"
) -> tuple[list[str], str, str | None]:
    if mode not in SPLIT_MODES:
        raise ValueError(f"unknown split mode {mode!r}; allowed: {', '.join(SPLIT_MODES)}")
    images = [str(v) for v in images]
    if len(patient_ids) != len(images):
        raise ValueError(f"patient_ids and images differ in length: {len(patient_ids)}, {len(images)}")
    if mode == "random":
        note = "random split of cells: cells of one image or patient can be on both sides (leaks)"
        return [str(i) for i in range(len(images))], mode, note
    if mode == "image":
        return images, mode, None
    patients = [_patient_or_none(p) for p in patient_ids]
    known = {(p, im) for p, im in zip(patients, images) if p is not None}
    n_missing = sum(p is None for p in patients)
    if not known:
        return images, "image", "no cell has a patient id: split by image instead"
    if n_missing == 0 and len(known) == len({p for p, _ in known}) == len(set(images)):
        return images, "image", "each image has its own patient id: split by image (same groups)"
    groups = [p if p is not None else f"image:{im}" for p, im in zip(patients, images)]
    note = f"{n_missing} cell(s) without a patient id grouped by their image" if n_missing else None
    return groups, "patient", note


def split_cells(
    patient_ids: Sequence[str | None],
    images: Sequence[str],
    labels: Sequence[int],
    mode: str = "patient",
    val_fraction: float = 0.2,
    seed: int = 0,
    contents: Sequence[str | None] | None = None,
) -> Split:
    """Split cells by patient, by source image or at random (stratified by label in every mode);
    see `cell_groups` for how patient mode falls back and how `contents` keeps copies together."""
    f = _check_fraction(val_fraction)
    if len(labels) != len(images) or len(patient_ids) != len(images):
        raise ValueError(
            f"patient_ids, images and labels differ in length: {len(patient_ids)}, {len(images)}, {len(labels)}"
        )
    groups, mode_used, note = cell_groups(patient_ids, images, mode, contents)
    n_groups = len(set(groups))
    if n_groups < 2:
        raise ValueError(
            f"a {mode_used} split needs at least 2 {mode_used}s, got {n_groups}: "
            f"add data or use mode 'random' (which leaks)"
        )
    train_idx, val_idx = split_groups(groups, labels, f, seed)
    if mode_used == "random":
        return Split(mode, mode_used, note, train_idx, val_idx, (), ())
    side = np.asarray(groups)
    train_groups = tuple(sorted(set(side[train_idx].tolist())))
    val_groups = tuple(sorted(set(side[val_idx].tolist())))
    return Split(mode, mode_used, note, train_idx, val_idx, train_groups, val_groups)
