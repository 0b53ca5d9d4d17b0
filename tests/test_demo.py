"""`allray demo`: its sizes are validated, and it never deletes a folder that is not an earlier demo's."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from jobs.demo import DemoConfig, run_demo


def test_demo_refuses_to_replace_a_folder_that_is_not_a_demo_output(tmp_path):
    keep = tmp_path / "precious.txt"
    keep.write_text("not a demo")
    with pytest.raises(ValueError, match="not an earlier demo's output"):
        run_demo(DemoConfig(out=str(tmp_path)), echo=lambda *_: None)
    assert keep.read_text() == "not a demo"
    result = CliRunner().invoke(cli, ["demo", str(tmp_path)])
    assert result.exit_code == 1 and "not an earlier demo's output" in result.output and keep.exists()


def test_demo_sizes_are_validated():
    with pytest.raises(ValueError, match="epochs"):
        DemoConfig(epochs=0)
