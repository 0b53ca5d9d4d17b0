#!/usr/bin/env bash
# The study's workflow on the ALL-IDB datasets (obtain them from the dataset's authors; they may not
# be redistributed): train the study's three architectures on ALL-IDB2's single cells, then count
# blasts on smears (here ALL-IDB1's, with their blast centroids as the known labels).
#
#   examples/allidb.sh /data/ALL_IDB1 /data/ALL_IDB2
set -euo pipefail
IDB1=${1:?path to ALL_IDB1 (ImNNN_L.jpg + xyc/)}
IDB2=${2:?path to ALL_IDB2 (ImNNN_L.tif)}

# ALL-IDB2: each image is one cell; label from the file name. The image is not resized whole: it
# gets the slides' window (24 um around the cell, the same as every slide crop), its scale measured
# from the red cells around the cell, so the model sees cells at the size it will see on slides.
# Downscaled copies (~103 px) work the same. An image whose red cells are too few to measure is
# quarantined with that reason; where you know the scale of every image, pass --um-per-pixel
# (`allray infer` measures the slides' own scale all the same, or takes its own --um-per-pixel).
allray ingest "$IDB2" --format allidb2 --out cells-idb2
# The study's protocol: a random 50/50 split of cells (ALL-IDB2 names no patients).
allray train cells-idb2 --arch all --split random --val-fraction 0.5 --epochs 100 --out runs/idb2

# Count blasts on smears with that model: detection and crops exactly as on any new slides.
# ALL-IDB1's xyc centroids give each detected cell its known label, kept beside the prediction in
# reports/idb1/predictions/ for scoring.
allray infer "$IDB1" --format allidb1 --model runs/idb2 --out reports/idb1

# Or train on ALL-IDB1's own smears (blasts from the xyc files, the other white cells healthy). Each
# image is its own sample: --split patient falls back to image.
allray ingest "$IDB1" --format allidb1 --out cells-idb1
allray train cells-idb1 --arch resnet --epochs 30 --out runs/idb1
allray infer slides/ --model runs/idb1 --out reports/new
