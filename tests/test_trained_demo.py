"""`make run` with no model installed shows the pipeline on the trained tiny Moondream, and the
answer is right: the demo describes an image of the model's world, not gibberish."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_the_demo_without_a_model_describes_an_image_of_the_trained_worlds_right(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "VENV": str(Path(sys.executable).parent.parent),
        "DEMO_DIR": str(tmp_path / "demo"),
        "PYTHONPATH": str(ROOT / "src"),
    }
    done = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "No Moondream2 model is installed" in err
    assert done.stdout.decode() == "A red circle on the left, on a white background.\n"
    assert (tmp_path / "demo" / "red-circle.png").is_file()
