"""Check, from their headers alone, that a text GGUF and an mmproj make one Moondream2 model.

llama.cpp trusts what a header says: a ``block_count`` of 0 trips a ``GGML_ASSERT`` (the
process aborts), and a projector whose output width is not the text model's embedding width
loads and answers garbage, or fails deep inside libmtmd. Both are refused here first, with
one line that names the files. Used when a model folder is resolved, by ``fetch`` before it
quantizes, and by ``bundle install`` on the staged files.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError
from .gguf_meta import Header, read_header

# Far above any real model's, far below what makes llama.cpp allocate without bound.
_LIMITS = {"block_count": 1024, "embedding_length": 1 << 16, "context_length": 1 << 24}


def check_pair(text: Path, mmproj: Path) -> None:
    """Raise ModelError unless ``text`` is a sane text model and ``mmproj`` a projector that
    feeds it: the projector's input is its vision encoder's width, its output the text
    model's embedding width."""
    text_header, mmproj_header = read_header(text), read_header(mmproj)
    n_embd = _check_text(text, text_header)
    widths = _projector_widths(mmproj, mmproj_header)
    if widths is None:
        return  # not the plain MLP projector: libmtmd checks its own kinds
    vision, into, out = widths
    if into != vision:
        raise ModelError(
            f"the projector takes {into}-wide input but its vision encoder gives {vision} "
            "(a later Moondream release's projector, which these files cannot feed)",
            path=str(mmproj),
        )
    if out != n_embd:
        raise ModelError(
            f"{mmproj.name} and {text.name} do not belong together: the projector gives "
            f"{out}-wide embeddings, the text model takes {n_embd}",
            path=str(mmproj.parent),
        )


def _check_text(path: Path, header: Header) -> int:
    """The text model's embedding width, after refusing hyperparameters llama.cpp would
    abort on."""
    arch = header.meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelError("GGUF file has no general.architecture", path=str(path))
    for key, limit in _LIMITS.items():
        value = header.meta.get(f"{arch}.{key}")
        if value is None and key == "context_length":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            raise ModelError(f"implausible {arch}.{key} {value!r} in the header", path=str(path))
    heads = header.meta.get(f"{arch}.attention.head_count")
    n_embd = header.meta[f"{arch}.embedding_length"]
    assert isinstance(n_embd, int)  # checked above
    if not isinstance(heads, int) or not 1 <= heads <= n_embd or n_embd % heads:
        raise ModelError(
            f"implausible {arch}.attention.head_count {heads!r} in the header", path=str(path)
        )
    embd = header.tensors.get("token_embd.weight")
    if embd is not None and embd.shape[0] != n_embd:
        raise ModelError(
            f"token_embd.weight is {embd.shape[0]} wide, the header says {n_embd}", path=str(path)
        )
    return n_embd


def _projector_widths(path: Path, header: Header) -> tuple[int, int, int] | None:
    """(vision encoder width, projector input width, projector output width) of an MLP
    projector (``mm.0`` then ``mm.2``, ggml order: row length first); None for other kinds."""
    meta = header.meta
    if meta.get("general.architecture") != "clip":
        raise ModelError("not an mmproj (general.architecture is not 'clip')", path=str(path))
    first, last = header.tensors.get("mm.0.weight"), header.tensors.get("mm.2.weight")
    if meta.get("clip.projector_type") != "mlp" or first is None or last is None:
        return None
    vision = meta.get("clip.vision.embedding_length")
    if not isinstance(vision, int) or len(first.shape) < 2 or len(last.shape) < 2:
        raise ModelError("the projector's header has no usable widths", path=str(path))
    return vision, first.shape[0], last.shape[1]
