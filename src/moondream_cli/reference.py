"""Where mdream feeds Moondream2 what its reference implementation fed it, not what
llama.cpp would feed it by default (docs/fidelity.md).

Every public Moondream2 GGUF holds the April 2024 release (one vision projector, sha256
``4cc1cb36…``). That release's reference (vikhyat/moondream, ``vision_encoder.py`` and
``moondream.py``):

- **pixels**: the RGB image *stretched* to the projector's image size (378×378) with Pillow's
  bicubic filter, aspect ratio ignored. libmtmd would letterbox it onto LLaVA's grey
  instead, and copies an image that already has the projector's size unchanged, so mdream
  stretches first (:class:`Fit`);
- **tokens**: GPT-2's byte-level BPE. The GGUFs carry no ``tokenizer.ggml.pre``, so llama.cpp
  would fall back to its 'default' pre-tokenizer ("What's" → ``What`` ``'`` ``s``);
  :func:`metadata_fixes` names GPT-2's for load time and for the files mdream writes;
- **stop**: EOS only (:mod:`.prompts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

PRE_TOKENIZER_KEY = "tokenizer.ggml.pre"
# llama.cpp's name for GPT-2's pre-tokenizer regex (src/llama-vocab.cpp; "phi-2" is the same).
GPT2_PRE_TOKENIZER = "gpt-2"
# What llama.cpp uses when a file names none (it then logs "GENERATION QUALITY WILL BE DEGRADED").
FALLBACK_PRE_TOKENIZER = "default"


class Fit(str, Enum):
    """How an image is fitted to the projector's square input."""

    STRETCH = "stretch"  # the reference's: resized to the square, aspect ratio ignored
    LETTERBOX = "letterbox"  # llama.cpp's: aspect kept, padded with LLaVA's grey


def metadata_fixes(meta: Mapping[str, object]) -> dict[str, str]:
    """Keys to override in a text GGUF's metadata so llama.cpp tokenizes as the reference:
    GPT-2's pre-tokenizer for a GPT-2 vocabulary that names none. Empty when nothing is missing."""
    if meta.get("tokenizer.ggml.model") == "gpt2" and PRE_TOKENIZER_KEY not in meta:
        return {PRE_TOKENIZER_KEY: GPT2_PRE_TOKENIZER}
    return {}


def pre_tokenizer(meta: Mapping[str, object]) -> str:
    """The pre-tokenizer llama.cpp uses for this text GGUF once :func:`metadata_fixes` apply."""
    value = metadata_fixes(meta).get(PRE_TOKENIZER_KEY, meta.get(PRE_TOKENIZER_KEY))
    return value if isinstance(value, str) else FALLBACK_PRE_TOKENIZER


# The vision projector of every public Moondream2 GGUF: the April 2024 release, converted by
# vikhyat/moondream's create_gguf.py (909,777,984 bytes).
PROJECTOR_2024_SHA256 = "4cc1cb3660d87ff56432ebeb7884ad35d67c48c7b9f6b2856f305e39c38eed8f"
MODEL_2024 = "Moondream2, April 2024 release (vikhyatk/moondream2 e67286f)"


def model_name(mmproj_sha256: str) -> str:
    """Which release a pair holds, told by its projector (text files differ in templates)."""
    if mmproj_sha256 == PROJECTOR_2024_SHA256:
        return MODEL_2024
    return f"unknown: projector sha256 {mmproj_sha256[:12]}… is not a known Moondream2 release's"
