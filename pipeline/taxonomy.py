"""The cell classes allray knows and how they relate: one tree, the classes as data.

Every label a source gives (a class folder's name, a `class` column, ALL-IDB's 0/1) maps to one
node of this tree. Leaves are the classes a model can predict; inner nodes are coarser labels that
stand for a group of leaves ("other" is what ALL-IDB says: any white cell but a lymphoblast).

    cell
    ├── wbc                       any white cell (the differential's denominator)
    │   ├── lymphoblast
    │   └── other                 any white cell but a lymphoblast
    │       ├── neutrophil  lymphocyte  monocyte  eosinophil  basophil  ig
    ├── erythroblast              nucleated red cell: counted per 100 white cells, apart
    ├── platelet                  not counted
    └── smudge                    ruptured cell: counted apart, never classified

A coarse label is compatible with every model class whose leaves it overlaps, which is what
partial-label training and the mapping of a model's classes onto a report use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TAXONOMY_VERSION = 1

LYMPHOBLAST = "lymphoblast"
NEUTROPHIL = "neutrophil"
LYMPHOCYTE = "lymphocyte"
MONOCYTE = "monocyte"
EOSINOPHIL = "eosinophil"
BASOPHIL = "basophil"
IG = "ig"
ERYTHROBLAST = "erythroblast"
PLATELET = "platelet"
SMUDGE = "smudge"
OTHER = "other"
WBC = "wbc"
ROOT = "cell"


@dataclass(frozen=True)
class CellClass:
    """One node of the tree."""

    name: str
    title: str  # what a person reads in a report
    parent: str | None
    white: bool  # a white cell: in the differential's denominator
    leaf: bool


_NODES = (
    CellClass(ROOT, "cell", None, False, False),
    CellClass(WBC, "white cell", ROOT, True, False),
    CellClass(LYMPHOBLAST, "lymphoblast", WBC, True, True),
    CellClass(OTHER, "other white cell", WBC, True, False),
    CellClass(NEUTROPHIL, "neutrophil", OTHER, True, True),
    CellClass(LYMPHOCYTE, "lymphocyte", OTHER, True, True),
    CellClass(MONOCYTE, "monocyte", OTHER, True, True),
    CellClass(EOSINOPHIL, "eosinophil", OTHER, True, True),
    CellClass(BASOPHIL, "basophil", OTHER, True, True),
    CellClass(IG, "immature granulocyte", OTHER, True, True),
    CellClass(ERYTHROBLAST, "erythroblast (nucleated red cell)", ROOT, False, True),
    CellClass(PLATELET, "platelet", ROOT, False, True),
    CellClass(SMUDGE, "smudge cell", ROOT, False, True),
)
NODES: dict[str, CellClass] = {n.name: n for n in _NODES}

# Leaf classes in report order: blasts first (the headline), then the normal differential.
CLASSES: tuple[str, ...] = tuple(n.name for n in _NODES if n.leaf)
WHITE_CLASSES: tuple[str, ...] = tuple(n.name for n in _NODES if n.leaf and n.white)
# Counted beside the differential, per 100 white cells (as labs report nucleated red cells).
APART_CLASSES: tuple[str, ...] = (ERYTHROBLAST, SMUDGE)
# What a binary (blast vs other) model predicts, in logit order of today's one-logit models.
BINARY_CLASSES: tuple[str, ...] = (OTHER, LYMPHOBLAST)

# Names sources use for the same node (lower case, words joined by "_"); plurals are folded too.
_SYNONYMS = {
    "blast": LYMPHOBLAST,
    "lymphoblasts": LYMPHOBLAST,
    "1": LYMPHOBLAST,
    "0": OTHER,
    "healthy": OTHER,
    "normal": OTHER,
    "non_blast": OTHER,
    "other_wbc": OTHER,
    "white_cell": WBC,
    "white_blood_cell": WBC,
    "leukocyte": WBC,
    "segmented_neutrophil": NEUTROPHIL,
    "band_neutrophil": NEUTROPHIL,
    "neutrophil_band": NEUTROPHIL,
    "neutrophil_segmented": NEUTROPHIL,
    "seg": NEUTROPHIL,
    "band": NEUTROPHIL,
    "lymph": LYMPHOCYTE,
    "small_lymphocyte": LYMPHOCYTE,
    "large_lymphocyte": LYMPHOCYTE,
    "mono": MONOCYTE,
    "eos": EOSINOPHIL,
    "baso": BASOPHIL,
    "immature_granulocyte": IG,
    "promyelocyte": IG,
    "myelocyte": IG,
    "metamyelocyte": IG,
    "nrbc": ERYTHROBLAST,
    "nucleated_red_cell": ERYTHROBLAST,
    "normoblast": ERYTHROBLAST,
    "plt": PLATELET,
    "giant_platelet": PLATELET,
    "platelet_clump": PLATELET,
    "smudge_cell": SMUDGE,
    "basket_cell": SMUDGE,
}


class UnknownClassError(ValueError):
    """A label that maps to no class of the taxonomy."""


def _key(value: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(value).strip().lower())


def lookup(value: str) -> str | None:
    """The node name a source's label stands for, or None when it is unknown."""
    key = _key(value)
    for candidate in (key, key[:-1] if key.endswith("s") else None):
        if candidate is None:
            continue
        if candidate in NODES:
            return candidate
        if candidate in _SYNONYMS:
            return _SYNONYMS[candidate]
    return None


def parse_class(value: str, where: str) -> str:
    """The node name of a label; UnknownClassError naming `where` (file[:line]), the value and the classes."""
    name = lookup(value)
    if name is None or name == ROOT:
        known = ", ".join((*CLASSES, OTHER, WBC))
        raise UnknownClassError(f"{where}: unknown cell class {value!r}; known classes: {known}")
    return name


def leaves(name: str) -> tuple[str, ...]:
    """The leaf classes a node stands for, in CLASSES order (a leaf stands for itself)."""
    node = NODES[name]
    if node.leaf:
        return (name,)
    return tuple(c for c in CLASSES if name in ancestors(c))


def ancestors(name: str) -> tuple[str, ...]:
    """The node itself and every node above it, nearest first."""
    out = []
    current: str | None = name
    while current is not None:
        out.append(current)
        current = NODES[current].parent
    return tuple(out)


def is_white(name: str) -> bool:
    """Whether a node is (a group of) white cells."""
    return NODES[name].white


def binary_label(name: str | None) -> int | None:
    """Today's binary label of a class: 1 lymphoblast, 0 any other white cell, None otherwise.

    None for non-white classes (erythroblast, platelet, smudge), for "wbc" (blast or not is not
    known) and for a missing class.
    """
    if name is None:
        return None
    if name == LYMPHOBLAST:
        return 1
    if NODES[name].white and LYMPHOBLAST not in leaves(name):
        return 0
    return None


def class_of_binary(label: int | None) -> str | None:
    """The class a binary label stands for: 1 -> lymphoblast, 0 -> other, None -> None."""
    if label is None:
        return None
    return LYMPHOBLAST if int(label) == 1 else OTHER


def compatible(label: str, model_class: str) -> bool:
    """Whether a cell labelled `label` may be of `model_class` (their leaves overlap)."""
    return bool(set(leaves(label)) & set(leaves(model_class)))


def target_indices(label: str, model_classes: Sequence[str]) -> tuple[int, ...]:
    """Indices of the model classes a label is compatible with (empty: not trainable with them)."""
    return tuple(i for i, c in enumerate(model_classes) if compatible(label, c))


def check_model_classes(classes: Iterable[str]) -> tuple[str, ...]:
    """A model's class list, validated: known nodes, no two overlapping (each leaf in one class)."""
    classes = tuple(classes)
    seen: dict[str, str] = {}
    for c in classes:
        if c not in NODES or c == ROOT:
            raise UnknownClassError(f"model class {c!r} is not in the taxonomy; known: {', '.join(CLASSES)}")
        for leaf in leaves(c):
            if leaf in seen:
                raise ValueError(f"model classes {seen[leaf]!r} and {c!r} overlap (both hold {leaf!r})")
            seen[leaf] = c
    if len(classes) < 2:
        raise ValueError(f"a model needs at least 2 classes, got {classes!r}")
    return classes


def column_names(name: str) -> tuple[str, str, str, str]:
    """The count-table columns of a class: n_<class>, <class>_pct, <class>_ci_low, <class>_ci_high."""
    return (f"n_{name}", f"{name}_pct", f"{name}_ci_low", f"{name}_ci_high")
