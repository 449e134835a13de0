"""The benchmark's fidelity measure (bench/knobs.py `fidelity`), behind the knob table.

It compares a setting's next-token logits with an exact-arithmetic f32 reference on the same
weights. These tests pin what makes it trustworthy: the reference files hold the same weights,
a run compared with itself scores zero, and a model with other weights scores far away.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from moondream_cli.engine import Engine, EngineOptions
from moondream_cli.images import load_image
from moondream_cli.locate import resolve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import knobs

import moondream_gguf


def _fidelity(model_dir: Path, photo: Path, ref_file: Path, **cfg: Any) -> dict[str, Any]:
    with Engine(resolve(model_dir), EngineOptions(threads=1, gpu=False)) as engine:
        engine.set_image(load_image(photo))
        return knobs.fidelity(engine, {"tokens": 6, "fidelity_file": str(ref_file), **cfg})


@pytest.fixture(scope="module")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pair widened to f32, written once for the module. Its tests are slow: writing
    it and reading GGUFs back are seconds of pure-Python work each (the GPT-2 vocabulary)."""
    return knobs.prepare_reference(
        "tiny",
        tiny_model / moondream_gguf.TEXT_NAME,
        tiny_model / moondream_gguf.MMPROJ_NAME,
        tmp_path_factory.mktemp("f32"),
    )


def test_a_run_against_its_own_reference_scores_zero(
    tiny_model: Path, photo: Path, tmp_path: Path
) -> None:
    ref = tmp_path / "ref.npz"
    assert _fidelity(tiny_model, photo, ref, reference=True) == {
        "logit_error": 0.0,
        "top1_agree": 1.0,
    }
    assert ref.is_file()
    again = _fidelity(tiny_model, photo, ref)
    assert again == {"logit_error": 0.0, "top1_agree": 1.0}


@pytest.mark.slow
def test_the_f32_reference_is_close_and_other_weights_are_far(
    tiny_model: Path, reference: Path, photo: Path, tmp_path: Path
) -> None:
    ref = tmp_path / "ref.npz"
    _fidelity(reference, photo, ref, reference=True)

    same_weights = _fidelity(tiny_model, photo, ref)
    other = tmp_path / "other"
    moondream_gguf.write_pair(other, moondream_gguf.TINY, seed=7)
    other_weights = _fidelity(other, photo, ref)

    # f16 arithmetic on the same weights: a rounding-sized error, not zero.
    assert 0.0 < same_weights["logit_error"] < 0.01
    assert other_weights["logit_error"] > 0.5
    assert other_weights["logit_error"] > 100 * same_weights["logit_error"]


@pytest.mark.slow
def test_the_reference_files_hold_the_same_weights(tiny_model: Path, reference: Path) -> None:
    for name in (moondream_gguf.TEXT_NAME, moondream_gguf.MMPROJ_NAME):
        src = {t.name: t for t in gguf.GGUFReader(str(tiny_model / name)).tensors}
        f32_name = "text-f32.gguf" if name == moondream_gguf.TEXT_NAME else "mmproj-f32.gguf"
        wide = gguf.GGUFReader(str(reference / f32_name))
        assert {t.name for t in wide.tensors} == set(src)
        for tensor in wide.tensors:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
            want = gguf.quants.dequantize(src[tensor.name].data, src[tensor.name].tensor_type)
            assert np.array_equal(np.asarray(tensor.data).reshape(want.shape), want)
