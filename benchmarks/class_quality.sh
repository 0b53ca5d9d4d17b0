#!/usr/bin/env bash
# Issue 11's synthetic check of the differential, end to end through the CLI:
# ResNet-18 trained 8 epochs with --classes auto on 24 patients x 6 smears, inferred on 9 other
# patients x 8 smears, then pipeline_quality.py compares every class's per-patient percentage (and
# blast %) with the truth.   Usage: benchmarks/class_quality.sh [OUT] [IMAGE_SIZE]
# IMAGE_SIZE: the model's input side (default 64, as `allray demo`; give 128 for the architecture's own).
set -euo pipefail
OUT=${1:-class-quality-out}
SIZE=${2:-64}
A=${ALLRAY:-.venv/bin/allray}
PY=${PYTHON:-.venv/bin/python}
rm -rf "$OUT"
mkdir -p "$OUT"
t0=$(date +%s)
$A synth "$OUT/train" --patients 24 --images-per-patient 6 --seed 11
$A synth "$OUT/new" --patients 9 --images-per-patient 8 --seed 12
$A ingest "$OUT/train/slides" --out "$OUT/cells" --labels "$OUT/train/truth/cells.csv"
$A train "$OUT/cells" --out "$OUT/run" --arch resnet --epochs 8 --classes auto --image-size "$SIZE"
$A infer "$OUT/new/slides" --model "$OUT/run" --out "$OUT/report" --min-cells 30
$PY benchmarks/pipeline_quality.py --truth "$OUT/new/truth/patients.csv" --report "$OUT/report" --run "$OUT/run"
echo "class_quality: $(( $(date +%s) - t0 )) s in all"
