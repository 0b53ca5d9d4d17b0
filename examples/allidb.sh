#!/usr/bin/env bash
# Ingest the ALL-IDB datasets (obtain them from the dataset's authors; they may not be redistributed)
# and train the study's three architectures on ALL-IDB2, then count blasts on ALL-IDB1 smears.
#
#   examples/allidb.sh /data/ALL_IDB1 /data/ALL_IDB2
set -euo pipefail
IDB1=${1:?path to ALL_IDB1 (ImNNN_L.jpg + xyc/)}
IDB2=${2:?path to ALL_IDB2 (ImNNN_L.tif)}

# ALL-IDB2: each image is one centred cell; label from the file name; no detection.
allray ingest "$IDB2" --format allidb2 --out cells-idb2
# The study's protocol: a random 50/50 split of cells (ALL-IDB2 names no patients).
allray train cells-idb2 --arch all --split random --val-fraction 0.5 --epochs 100 --out runs/idb2

# ALL-IDB1: full smears; blasts from the xyc centroid files, other white cells healthy. Its crops
# are cut like those of new slides (a fixed window in micrometres), so a model trained on them
# can count blasts on new slides. Each image is its own sample: --split patient falls back to image.
allray ingest "$IDB1" --format allidb1 --out cells-idb1
allray train cells-idb1 --arch resnet --epochs 30 --out runs/idb1
allray infer slides/ --model runs/idb1 --out reports/new
# Note: ALL-IDB2 crops are whole single-cell images resized to the crop size, not micrometre
# windows: use models trained on them for ALL-IDB2-like crops only.
