"""libmtmd's side: the loaded mmproj (vision encoder and projector) and the chunks a prompt
with an image is tokenized into."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InputError, ModelError
from .library import llama
from .text import Context, Model, Owned, flash_attn_type


def mtmd() -> Any:
    from llama_cpp import mtmd_cpp

    return mtmd_cpp


# -- the mmproj ------------------------------------------------------------------------------
class Projector(Owned):
    """A loaded mmproj (``mtmd_context``): the vision encoder and its projector."""

    _what = "mmproj"

    def __init__(
        self, path: Path, model: Model, *, gpu: bool, threads: int, flash_attn: bool | None
    ) -> None:
        mt = mtmd()
        params = mt.mtmd_context_params_default()
        params.use_gpu = gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = gpu
        params.flash_attn_type = flash_attn_type(flash_attn)
        ptr = mt.mtmd_init_from_file(os.fsencode(path), model.ptr, params)
        if not ptr:
            raise ModelError(
                "cannot load the mmproj, or it does not match the text model "
                "(run with --verbose for llama.cpp's reason)",
                path=str(path),
            )
        super().__init__(ptr, mt.mtmd_free)
        if not mt.mtmd_support_vision(ptr):
            self.close()
            raise ModelError("the mmproj has no vision encoder", path=str(path))
        self.marker: bytes = mt.mtmd_default_marker()

    def tokenize(self, text: bytes, width: int, height: int, rgb: bytes) -> Chunks:
        """Split ``text`` (one :attr:`marker` where the image goes; special tokens parsed) and
        the packed RGB image into chunks. Only mdream's own fixed text comes here."""
        mt = mtmd()
        if width < 1 or height < 1 or len(rgb) != width * height * 3:
            # libmtmd reads width × height × 3 bytes, whatever the buffer holds.
            raise InputError("pixel data does not match the image size")
        buf = (ctypes.c_uint8 * len(rgb)).from_buffer_copy(rgb)
        bitmap = mt.mtmd_bitmap_init(width, height, buf)
        if not bitmap:
            raise InputError("cannot hand the pixels to libmtmd")
        chunks = Chunks()
        try:
            inp = mt.mtmd_input_text()
            inp.text = text
            inp.text_len = len(text)
            inp.add_special = False
            inp.parse_special = True
            bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
            # libmtmd converts the bitmap while tokenizing: it is not needed afterwards.
            rc = mt.mtmd_tokenize(self.ptr, chunks.ptr, ctypes.byref(inp), bitmaps, 1)
        except BaseException:
            chunks.close()
            raise
        finally:
            mt.mtmd_bitmap_free(bitmap)
        if rc != 0:
            chunks.close()
            raise InputError(f"libmtmd could not tokenize the image (code {rc})")
        return chunks

    def encode(self, chunk: Chunk) -> None:
        """Run the vision encoder on an image chunk (its output: until the next encode)."""
        rc = mtmd().mtmd_encode_chunk(self.ptr, chunk.ptr)
        if rc != 0:
            raise InputError(f"libmtmd could not encode the image (code {rc})")

    def batchable(self, chunk: Chunk) -> bool:
        """Whether the image's embeddings can be evaluated as plain rows at consecutive
        positions with causal attention, as Moondream2's are (:meth:`embeddings`); models
        with M-RoPE positions or non-causal image attention need libmtmd's own helper."""
        mt = mtmd()
        return not mt.mtmd_decode_use_mrope(self.ptr) and not mt.mtmd_decode_use_non_causal(
            self.ptr, chunk.ptr
        )

    def embeddings(self, chunk: Chunk, n_embd: int) -> Any:
        """A copy of the last encoded image's embeddings (``chunk.n_tokens`` rows of
        ``n_embd`` floats): the next encode replaces libmtmd's own."""
        size = chunk.n_tokens * n_embd
        copy = (ctypes.c_float * size)()
        src = mtmd().mtmd_get_output_embd(self.ptr)
        ctypes.memmove(copy, src, size * 4)
        return copy

    def decode_image(self, context: Context, chunk: Chunk, pos: int, seq: int, n_batch: int) -> int:
        """Evaluate the last encoded image into ``seq`` from ``pos``; return the next position."""
        mt, ll = mtmd(), llama()
        new_pos = ll.llama_pos(0)
        rc = mt.mtmd_helper_decode_image_chunk(
            self.ptr,
            context.ptr,
            chunk.ptr,
            mt.mtmd_get_output_embd(self.ptr),
            pos,
            seq,
            n_batch,
            ctypes.byref(new_pos),
            mt.mtmd_helper_post_decode_callback(0),
            None,
        )
        if rc != 0:
            raise InputError(f"libmtmd could not evaluate the image (code {rc})")
        return int(new_pos.value)

    def decode_text(self, context: Context, chunk: Chunk, pos: int, seq: int, n_batch: int) -> int:
        """Evaluate a text chunk into ``seq`` from ``pos``; return the next position."""
        mt, ll = mtmd(), llama()
        new_pos = ll.llama_pos(pos)
        rc = mt.mtmd_helper_eval_chunk_single(
            self.ptr, context.ptr, chunk.ptr, pos, seq, n_batch, False, ctypes.byref(new_pos)
        )
        if rc != 0:
            raise InputError(f"libmtmd could not evaluate the image prompt (code {rc})")
        return int(new_pos.value)


@dataclass(frozen=True)
class Chunk:
    ptr: Any
    is_image: bool
    n_tokens: int


class Chunks(Owned):
    """``mtmd_input_chunks``: the text and image pieces of one tokenized prompt."""

    _what = "mtmd chunks"

    def __init__(self) -> None:
        mt = mtmd()
        super().__init__(mt.mtmd_input_chunks_init(), mt.mtmd_input_chunks_free)

    def __iter__(self) -> Iterator[Chunk]:
        mt = mtmd()
        for i in range(mt.mtmd_input_chunks_size(self.ptr)):
            ptr = mt.mtmd_input_chunks_get(self.ptr, i)
            kind = mt.mtmd_input_chunk_get_type(ptr)
            yield Chunk(
                ptr, kind == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE, mt.mtmd_input_chunk_get_n_tokens(ptr)
            )
