"""The command line: fast help, bare invocations with folder defaults, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
import time

from click.testing import CliRunner

from jobs.cli import cli


def test_help_answers_fast_without_heavy_imports():
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", "import sys; from jobs.cli import main; main(['--help'])"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0 and "ingest" in out.stdout and "train" in out.stdout and "infer" in out.stdout
    assert time.perf_counter() - started < 3.0  # includes interpreter start; the CLI itself is ~50 ms
    probe = "import sys; import jobs.cli; print(sorted(m for m in ('ray', 'torch', 'skimage') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"


def test_choice_lists_spelled_out_for_fast_help_match_the_configs():
    from jobs import cli_common as cli_module
    from pipeline.config import SINGLE_CELL_SCALES
    from pipeline.sources import FORMATS

    assert cli_module.SOURCE_FORMATS == FORMATS and cli_module.SINGLE_CELL_SCALES == SINGLE_CELL_SCALES


def _run(args, cwd):
    """Invoke the CLI from folder `cwd` (bare invocations resolve ./slides, ./cells, ./runs there)."""
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, args)
    finally:
        os.chdir(old)


def test_bare_ingest_without_slides_folder_is_one_clear_line(tmp_path):
    result = _run(["ingest"], tmp_path)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: source folder slides does not exist or is not a folder"]


def test_bare_train_without_cells_says_what_to_run(tmp_path):
    result = _run(["train"], tmp_path)
    assert result.exit_code == 1 and "allray ingest" in result.output and "Traceback" not in result.output


def test_bare_infer_without_model_says_how_to_train_one(tmp_path):
    result = _run(["infer"], tmp_path)
    assert result.exit_code == 1 and "allray train" in result.output and len(result.output.strip().splitlines()) == 1


def test_unknown_arch_is_refused_before_any_work(tmp_path):
    result = _run(["train", "--arch", "alexnet"], tmp_path)
    assert result.exit_code == 1 and "unknown model 'alexnet'" in result.output


def test_bad_size_is_a_usage_error(tmp_path):
    result = _run(["synth", "out", "--size", "big"], tmp_path)
    assert result.exit_code == 2 and "WIDTHxHEIGHT" in result.output


def test_synth_red_cell_tint_draws_the_same_cells_with_lavender_red_cells(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from pipeline.scale import measure_optical_density, measure_red_cell_colour

    args = ["--patients", "1", "--images-per-patient", "1", "--size", "400x300"]
    assert _run(["synth", "pink", *args], tmp_path).exit_code == 0
    result = _run(["synth", "lavender", *args, "--red-cell-tint", "1"], tmp_path)
    assert result.exit_code == 0, result.output
    pink, lavender = tmp_path / "pink", tmp_path / "lavender"
    assert (lavender / "truth" / "cells.csv").read_text() == (pink / "truth" / "cells.csv").read_text()
    settings = json.loads((lavender / "truth" / "cohort.json").read_text())
    assert settings["red_cell_tint"] == 1.0 and settings["per_patient"]["P000"]["style"]["red_cell_tint"] == 1.0
    image = lavender / "slides" / "P000" / "S0" / "img000.png"
    colour = measure_red_cell_colour(measure_optical_density(np.asarray(Image.open(image).convert("RGB"))))
    assert colour is not None and colour.lavender
    image = pink / "slides" / "P000" / "S0" / "img000.png"
    assert not measure_red_cell_colour(measure_optical_density(np.asarray(Image.open(image).convert("RGB")))).lavender
    result = _run(["synth", "bad", *args, "--red-cell-tint", "2"], tmp_path)
    assert result.exit_code == 2 and "--red-cell-tint" in result.output and not (tmp_path / "bad").exists()


def test_infer_settings_are_checked_before_any_work(tmp_path):
    """InferConfig refuses bad settings (no model needed: the config is checked first)."""
    import pytest

    from pipeline.config import InferConfig

    for args, words in (
        (["--threshold", "1.5"], "threshold=1.5"),
        (["--blast-alert", "0"], "blast_alert=0"),
        (["--min-cells", "-1"], "min_cells=-1"),
        (["--workers", "0"], "workers=0"),
        (["--format", "manifest"], "needs a manifest"),
    ):
        result = _run(["infer", *args], tmp_path)
        assert result.exit_code == 1 and words in result.output and "Traceback" not in result.output, args
    assert InferConfig(slides="s", threshold=0.3).threshold == 0.3
    with pytest.raises(ValueError, match="batch_size=0"):
        InferConfig(batch_size=0)
