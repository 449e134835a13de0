"""Write GGUF pairs with exactly Moondream2's layout and random weights.

The real weights cannot be downloaded here, so the test suite (tiny shapes) and the
benchmark (full shapes) both use files written by this module. The layout follows
../shared/FIXTURES.md: a ``phi2`` text model plus a CLIP mmproj with projector ``mlp``.
Output is deterministic: the same shape and seed give the same bytes.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


@dataclass(frozen=True)
class Shape:
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_rot: int
    n_vocab: int
    n_ctx: int
    image_size: int
    patch: int
    v_embd: int
    v_ff: int
    v_layer: int
    v_head: int


# Both use GPT-2's real vocabulary padded to 51,200, as Moondream2's text GGUFs do.
TINY = Shape(64, 256, 2, 4, 8, 51200, 2048, 56, 14, 32, 64, 2, 4)
FULL = Shape(2048, 8192, 24, 32, 32, 51200, 2048, 378, 14, 1152, 4304, 27, 16)
SHAPES = {"tiny": TINY, "full": FULL}

TEXT_NAME = "moondream2-text-model-f16.gguf"
MMPROJ_NAME = "moondream2-mmproj-f16.gguf"
# Bumped whenever the files written change, so cached benchmark models are written anew.
GENERATOR_VERSION = 2
# llama.cpp's GPT-2 vocabulary and tokenizer vectors, from the pinned sdist (tests/data/gpt2).
GPT2_VOCAB = Path(__file__).parent / "data" / "gpt2" / "ggml-vocab-gpt-2.gguf"
GPT2_EOS = 50256


@functools.cache
def gpt2_vocabulary() -> tuple[list[str], list[int], list[str]]:
    """GPT-2's tokens, token types and merges, from llama.cpp's own test vocabulary."""
    from moondream_cli.gguf_meta import read_header

    keys = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
    meta = read_header(GPT2_VOCAB, keep_arrays=frozenset(keys)).meta
    tokens, types, merges = (meta[key] for key in keys)
    assert isinstance(tokens, list) and isinstance(types, list) and isinstance(merges, list)
    return [str(t) for t in tokens], [int(t) for t in types], [str(m) for m in merges]


class _Weights:
    """Deterministic ~N(0, 0.02) tensors; large ones are pieces of one random block, each
    from a random offset (so no two rows of the output matrix repeat), to stay fast."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.block = self.rng.normal(0.0, 0.02, size=1 << 20).astype(np.float32)

    def normal(self, shape: tuple[int, ...], dtype: type = np.float16) -> np.ndarray:
        n = int(np.prod(shape))
        if n <= self.block.size:
            start = int(self.rng.integers(0, self.block.size - n + 1))
            flat = self.block[start : start + n]
        else:
            piece = 1 << 16
            starts = self.rng.integers(0, self.block.size - piece + 1, size=-(-n // piece))
            flat = np.concatenate([self.block[i : i + piece] for i in starts])[:n]
        return flat.reshape(shape).astype(dtype)

    @staticmethod
    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    @staticmethod
    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)


def write_text_model(
    path: Path, shape: Shape = TINY, seed: int = 0, chat_template: str | None = None
) -> Path:
    """The phi2 text model; ``chat_template`` embeds one, as ggml-org's file carries "vicuna".
    The tiny one is written once per test process and copied after that: packing GPT-2's
    vocabulary takes the gguf writer 0.7 s, and many tests write a pair of their own. Not
    while ``gguf.GGUFWriter`` is replaced (bench/knobs.py widens every tensor to f32 so)."""
    key = (shape, seed, chat_template)
    cached = shape == TINY and gguf.GGUFWriter is _GGUF_WRITER
    if cached and key in _WRITTEN:
        path.write_bytes(_WRITTEN[key])
        return path
    _write_text_model(path, shape, seed, chat_template)
    if cached:
        _WRITTEN[key] = path.read_bytes()
    return path


_WRITTEN: dict[tuple[Shape, int, str | None], bytes] = {}
_GGUF_WRITER = gguf.GGUFWriter


def _write_text_model(path: Path, shape: Shape, seed: int, chat_template: str | None) -> None:
    s, w = shape, _Weights(seed)
    writer = text_model_writer(path, s, "moondream2-shaped random text model", chat_template)
    E, F, V = s.n_embd, s.n_ff, s.n_vocab
    writer.add_tensor("token_embd.weight", w.normal((V, E)))
    writer.add_tensor("output_norm.weight", w.ones(E))
    writer.add_tensor("output_norm.bias", w.zeros(E))
    writer.add_tensor("output.weight", w.normal((V, E)))
    writer.add_tensor("output.bias", w.zeros(V))
    for i in range(s.n_layer):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", w.ones(E))
        writer.add_tensor(p + "attn_norm.bias", w.zeros(E))
        writer.add_tensor(p + "attn_qkv.weight", w.normal((3 * E, E)))
        writer.add_tensor(p + "attn_qkv.bias", w.zeros(3 * E))
        writer.add_tensor(p + "attn_output.weight", w.normal((E, E)))
        writer.add_tensor(p + "attn_output.bias", w.zeros(E))
        writer.add_tensor(p + "ffn_up.weight", w.normal((F, E)))
        writer.add_tensor(p + "ffn_up.bias", w.zeros(F))
        writer.add_tensor(p + "ffn_down.weight", w.normal((E, F)))
        writer.add_tensor(p + "ffn_down.bias", w.zeros(E))
    finish(writer)


def text_model_writer(
    path: Path, s: Shape, name: str, chat_template: str | None = None
) -> gguf.GGUFWriter:
    """A phi2 writer holding every key of Moondream2's text GGUF and GPT-2's vocabulary."""
    writer = gguf.GGUFWriter(str(path), "phi2")
    writer.add_name(name)
    writer.add_context_length(s.n_ctx)
    writer.add_embedding_length(s.n_embd)
    writer.add_feed_forward_length(s.n_ff)
    writer.add_block_count(s.n_layer)
    writer.add_head_count(s.n_head)
    writer.add_head_count_kv(s.n_head)
    writer.add_rope_dimension_count(s.n_rot)
    writer.add_layer_norm_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    tokens, types, merges = gpt2_vocabulary()
    tokens, types = tokens[:], types[:]
    eos = GPT2_EOS
    while len(tokens) < s.n_vocab:
        tokens.append(f"<|unused{len(tokens)}|>")
        types.append(gguf.TokenType.USER_DEFINED)
    # Like the public Moondream2 files: no tokenizer.ggml.pre (llama.cpp then warns and
    # pre-tokenizes with its 'default' rule unless mdream overrides it).
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    return writer


def write_mmproj(
    path: Path, shape: Shape = TINY, seed: int = 1, projector_input: int | None = None
) -> Path:
    """The CLIP mmproj; ``projector_input`` other than the vision width makes a projector
    like the 2025 releases' (wider input than this encoder gives), for the pairing checks."""
    s, w = shape, _Weights(seed)
    writer = mmproj_writer(path, s, "moondream2-shaped random mmproj")

    VE, VF, P, E = s.v_embd, s.v_ff, s.patch, s.n_embd
    n_pos = (s.image_size // P) ** 2
    writer.add_tensor("v.patch_embd.weight", w.normal((VE, 3, P, P)))
    writer.add_tensor("v.patch_embd.bias", w.zeros(VE))
    writer.add_tensor("v.position_embd.weight", w.normal((n_pos, VE)))
    for i in range(s.v_layer):
        p = f"v.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(p + name + ".weight", w.normal((VE, VE)))
            writer.add_tensor(p + name + ".bias", w.zeros(VE))
        for name in ("ln1", "ln2"):
            writer.add_tensor(p + name + ".weight", w.ones(VE))
            writer.add_tensor(p + name + ".bias", w.zeros(VE))
        writer.add_tensor(p + "ffn_up.weight", w.normal((VF, VE)))
        writer.add_tensor(p + "ffn_up.bias", w.zeros(VF))
        writer.add_tensor(p + "ffn_down.weight", w.normal((VE, VF)))
        writer.add_tensor(p + "ffn_down.bias", w.zeros(VE))
    writer.add_tensor("v.post_ln.weight", w.ones(VE))
    writer.add_tensor("v.post_ln.bias", w.zeros(VE))
    writer.add_tensor("mm.0.weight", w.normal((E, projector_input or VE)))
    writer.add_tensor("mm.0.bias", w.zeros(E))
    writer.add_tensor("mm.2.weight", w.normal((E, E)))
    writer.add_tensor("mm.2.bias", w.zeros(E))
    finish(writer)
    return path


def mmproj_writer(path: Path, s: Shape, name: str, eps: float = 1e-6) -> gguf.GGUFWriter:
    """A clip writer holding every key of Moondream2's mmproj (create_gguf.py's)."""
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name(name)
    writer.add_bool("clip.has_text_encoder", False)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_uint32("clip.vision.image_size", s.image_size)
    writer.add_uint32("clip.vision.patch_size", s.patch)
    writer.add_uint32("clip.vision.embedding_length", s.v_embd)
    writer.add_uint32("clip.vision.feed_forward_length", s.v_ff)
    writer.add_uint32("clip.vision.projection_dim", s.n_embd)
    writer.add_uint32("clip.vision.attention.head_count", s.v_head)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", eps)
    writer.add_uint32("clip.vision.block_count", s.v_layer)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    # Without it llama.cpp silently uses gelu_quick (tools/mtmd/clip.cpp).
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("general.file_type", 1)
    return writer


def finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_pair(directory: Path, shape: Shape = TINY, seed: int = 0) -> tuple[Path, Path]:
    """Write the f16 text model and the mmproj into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    text = write_text_model(directory / TEXT_NAME, shape, seed)
    mmproj = write_mmproj(directory / MMPROJ_NAME, shape, seed + 1)
    return text, mmproj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_pair(args.directory, SHAPES[args.size], args.seed):
        print(path)


if __name__ == "__main__":
    main()
