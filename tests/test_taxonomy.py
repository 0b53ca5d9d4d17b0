"""The class tree: every source's labels map to a node; coarse labels stand for their leaves."""

import pytest

from pipeline import taxonomy as tx


@pytest.mark.parametrize(
    "value, expected",
    [
        ("basophil", tx.BASOPHIL),
        ("eosinophil", tx.EOSINOPHIL),
        ("erythroblast", tx.ERYTHROBLAST),
        ("ig", tx.IG),
        ("lymphocyte", tx.LYMPHOCYTE),
        ("monocyte", tx.MONOCYTE),
        ("neutrophil", tx.NEUTROPHIL),
        ("platelet", tx.PLATELET),  # the PBC folders
        ("1", tx.LYMPHOBLAST),
        ("0", tx.OTHER),  # ALL-IDB's labels
        ("Neutrophils", tx.NEUTROPHIL),
        ("Immature granulocyte", tx.IG),
        ("basket-cell", tx.SMUDGE),
        ("NRBC", tx.ERYTHROBLAST),
        ("blast", tx.LYMPHOBLAST),
        ("WBC", tx.WBC),
    ],
)
def test_source_labels_map_to_one_node(value, expected):
    assert tx.parse_class(value, "x.csv:2") == expected


def test_an_unknown_label_names_the_file_the_value_and_the_classes():
    with pytest.raises(tx.UnknownClassError) as err:
        tx.parse_class("megakaryocyte", "labels.csv:7")
    text = str(err.value)
    assert "labels.csv:7" in text and "'megakaryocyte'" in text and "neutrophil" in text


def test_coarse_labels_stand_for_their_leaves():
    assert tx.leaves(tx.OTHER) == (tx.NEUTROPHIL, tx.LYMPHOCYTE, tx.MONOCYTE, tx.EOSINOPHIL, tx.BASOPHIL, tx.IG)
    assert tx.leaves(tx.WBC) == tx.WHITE_CLASSES
    assert tx.LYMPHOBLAST not in tx.leaves(tx.OTHER)
    assert tx.target_indices(tx.OTHER, (tx.LYMPHOBLAST, tx.NEUTROPHIL, tx.PLATELET, tx.MONOCYTE)) == (1, 3)
    assert tx.target_indices(tx.NEUTROPHIL, tx.BINARY_CLASSES) == (0,)
    assert tx.target_indices(tx.PLATELET, tx.BINARY_CLASSES) == ()


def test_binary_label_is_derived_from_the_class():
    assert tx.binary_label(tx.LYMPHOBLAST) == 1
    assert [tx.binary_label(c) for c in (tx.NEUTROPHIL, tx.IG, tx.OTHER)] == [0, 0, 0]
    assert [tx.binary_label(c) for c in (tx.ERYTHROBLAST, tx.PLATELET, tx.SMUDGE, tx.WBC, None)] == [None] * 5


def test_model_classes_must_not_overlap():
    assert tx.check_model_classes(tx.BINARY_CLASSES) == (tx.OTHER, tx.LYMPHOBLAST)
    with pytest.raises(ValueError, match="overlap"):
        tx.check_model_classes((tx.OTHER, tx.NEUTROPHIL))
    with pytest.raises(tx.UnknownClassError):
        tx.check_model_classes((tx.LYMPHOBLAST, "dragon"))
