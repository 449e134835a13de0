"""The tiny trained Moondream (tests/data/shapes-moondream) as a GGUF pair, from its weights.

Written the way vikhyat/moondream's create_gguf.py (commit bdefcdd) wrote the public
Moondream2 files, with moondream_gguf's writers for the keys and GPT-2's vocabulary:

- a ``phi2`` text model: GPT-2's vocabulary padded to 51,200, no ``tokenizer.ggml.pre``; the
  rows the model never used have zero weights and a very negative output bias, so they can
  never win;
- a CLIP mmproj, projector ``mlp``: the vision blocks plus a copy of the last (llama.cpp's
  llava graph runs ``block_count - 1`` of them), each block's first MLP layer named
  ``ffn_down`` and its second ``ffn_up`` (create_gguf.py's names, which llama.cpp swaps back
  because ``ffn_down``'s input width is the vision width), the reference's LayerNorm eps.

Run as ``python tests/shapes_gguf.py DIR`` to write the pair into DIR. Well under 2 seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from moondream_gguf import MMPROJ_NAME, TEXT_NAME, Shape, finish, mmproj_writer, text_model_writer

WEIGHTS = Path(__file__).parent / "data" / "shapes-moondream" / "weights.npz"
VOCAB = 51200  # GPT-2's 50,257 padded, as in Moondream2's files


class Trained:
    """The weights file: float16 tensors under the reference's names, and its config."""

    def __init__(self, weights: Path = WEIGHTS) -> None:
        with np.load(weights, allow_pickle=False) as npz:
            t: dict[str, np.ndarray] = {k: np.asarray(npz[k]) for k in npz.files}
        self.config = json.loads(str(t.pop("config")))
        self.vocab_in, self.vocab_out = t.pop("vocab_in"), t.pop("vocab_out")
        self.t = t

    def shape(self, vision_blocks: int) -> Shape:
        c = self.config
        shape = Shape(
            c["n_embd"], c["n_ff"], c["n_layer"], c["n_head"], c["n_rot"], VOCAB, 2048,
            c["image_size"], c["patch"], c["v_embd"], c["v_ff"], vision_blocks, c["v_head"],
        )  # fmt: skip
        # llama.cpp tells a vision block's two MLP layers apart by ffn_down's input width:
        # with equal widths it would silently use them the wrong way round.
        assert shape.v_ff != shape.v_embd, "llama.cpp's ffn up/down rule needs v_ff != v_embd"
        return shape

    def f16(self, name: str) -> np.ndarray:
        return self.t[name].astype(np.float16)

    def f32(self, name: str) -> np.ndarray:
        return self.t[name].astype(np.float32)


def write_text_model(path: Path, weights: Path = WEIGHTS) -> Path:
    m = Trained(weights)
    shape = m.shape(m.config["v_layer"] + 1)
    writer = text_model_writer(path, shape, "tiny trained moondream (shapes world)")
    embd = np.zeros((VOCAB, shape.n_embd), np.float16)
    embd[m.vocab_in] = m.f16("text.wte")
    out_w = np.zeros((VOCAB, shape.n_embd), np.float16)
    out_w[m.vocab_out] = m.f16("text.lm_head.linear.weight")
    out_b = np.full(VOCAB, m.config["unused_bias"], np.float32)
    out_b[m.vocab_out] = m.f32("text.lm_head.linear.bias")
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", m.f32("text.lm_head.ln.weight"))
    writer.add_tensor("output_norm.bias", m.f32("text.lm_head.ln.bias"))
    writer.add_tensor("output.weight", out_w)
    writer.add_tensor("output.bias", out_b)
    for i in range(shape.n_layer):
        for theirs, ours in (
            ("ln", "attn_norm"),
            ("mixer.Wqkv", "attn_qkv"),
            ("mixer.out_proj", "attn_output"),
            ("mlp.fc1", "ffn_up"),
            ("mlp.fc2", "ffn_down"),
        ):
            weight = m.f32 if theirs == "ln" else m.f16
            writer.add_tensor(f"blk.{i}.{ours}.weight", weight(f"text.h.{i}.{theirs}.weight"))
            writer.add_tensor(f"blk.{i}.{ours}.bias", m.f32(f"text.h.{i}.{theirs}.bias"))
    finish(writer)
    return path


def write_mmproj(path: Path, weights: Path = WEIGHTS, *, copy_last_block: bool = True) -> Path:
    """The mmproj; ``copy_last_block=False`` leaves the copy out, for the test that shows
    what llama.cpp then computes."""
    m = Trained(weights)
    trained = m.config["v_layer"]
    shape = m.shape(trained + (1 if copy_last_block else 0))
    name = "tiny trained moondream mmproj (shapes world)"
    writer = mmproj_writer(path, shape, name, eps=m.config["vision_eps"])
    ve, p = shape.v_embd, shape.patch
    writer.add_tensor("mm.0.weight", m.f16("projection.fc1.weight"))
    writer.add_tensor("mm.0.bias", m.f32("projection.fc1.bias"))
    writer.add_tensor("mm.2.weight", m.f16("projection.fc2.weight"))
    writer.add_tensor("mm.2.bias", m.f32("projection.fc2.bias"))
    writer.add_tensor("v.position_embd.weight", m.f16("vision.pos_embed"))
    patches = m.f16("vision.patch_embed.weight").reshape(ve, 3, p, p)  # (channel, row, col)
    writer.add_tensor("v.patch_embd.weight", patches)
    writer.add_tensor("v.patch_embd.bias", m.f32("vision.patch_embed.bias"))
    writer.add_tensor("v.post_ln.weight", m.f32("vision.norm.weight"))
    writer.add_tensor("v.post_ln.bias", m.f32("vision.norm.bias"))
    for i in range(shape.v_layer):
        src, dst = f"vision.blocks.{min(i, trained - 1)}.", f"v.blk.{i}."
        q_k_v = zip(
            ("attn_q", "attn_k", "attn_v"),
            np.split(m.f16(src + "attn.qkv.weight"), 3),
            np.split(m.f32(src + "attn.qkv.bias"), 3),
            strict=True,
        )
        for part, q_k_or_v, bias in q_k_v:
            writer.add_tensor(f"{dst}{part}.weight", q_k_or_v)
            writer.add_tensor(f"{dst}{part}.bias", bias)
        for theirs, ours in (
            ("attn.proj", "attn_out"),
            ("norm1", "ln1"),
            ("norm2", "ln2"),
            ("mlp.fc1", "ffn_down"),  # sic: create_gguf.py's names, which llama.cpp swaps
            ("mlp.fc2", "ffn_up"),
        ):
            weight = m.f32 if theirs.startswith("norm") else m.f16
            writer.add_tensor(f"{dst}{ours}.weight", weight(f"{src}{theirs}.weight"))
            writer.add_tensor(f"{dst}{ours}.bias", m.f32(f"{src}{theirs}.bias"))
    finish(writer)
    return path


def write_pair(directory: Path, weights: Path = WEIGHTS) -> tuple[Path, Path]:
    """Write the f16 text model and the mmproj into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_text_model(directory / TEXT_NAME, weights), write_mmproj(
        directory / MMPROJ_NAME, weights
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    for path in write_pair(args.directory, args.weights):
        print(path)


if __name__ == "__main__":
    main()
