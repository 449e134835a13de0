"""A reference implementation of the tiny trained Moondream, in numpy, independent of llama.cpp.

Written from the April-2024 reference code (vikhyat/moondream; ../shared/REFERENCE.md), not
from llama.cpp's graph: a SigLIP-style vision transformer (linear patch embedding over
(channel, row, column) patches, learned positions, pre-norm blocks with fused QKV, tanh
GELU MLP, a final LayerNorm), the two-layer GELU MLP projector, and a Phi-1.5 decoder
(LayerNorm, fused QKV with biases, rotary embedding over the first ``n_rot`` dimensions of
each head in rotate-half (NEOX) form, attention and MLP in parallel on the same normed input,
an untied output head with a bias). GPT-2's byte-level BPE is written out here too.

It reads the committed weights (tests/data/shapes-moondream/weights.npz, float16) and computes
in float32. The training script writes the golden answers with it; a test re-checks them
from the committed weights, and mdream's answers are held to them token for token.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import moondream_gguf

DATA = Path(__file__).parent / "data" / "shapes-moondream"
WEIGHTS = DATA / "weights.npz"
BOS = EOS = moondream_gguf.GPT2_EOS
PROMPT = "\n\nQuestion: {question}\n\nAnswer:"  # after BOS and the image
# An earlier turn of a conversation, as the reference's sample.py kept its chat_history; the
# history goes between the image and the new question ("\n\n{history}Question: …").
TURN = "Question: {question}\n\nAnswer: {answer}\n\n"


def prompt_text(question: str, history: tuple[tuple[str, str], ...] = ()) -> str:
    """The text after BOS and the image for ``question`` after the ``history`` turns
    (question, answer), as the reference's ``answer_question(..., chat_history=...)``."""
    turns = "".join(TURN.format(question=q.strip(), answer=a.strip()) for q, a in history)
    return "\n\n" + turns + PROMPT.format(question=question.strip())[2:]


@dataclass(frozen=True)
class Config:
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_rot: int
    image_size: int
    patch: int
    v_embd: int
    v_ff: int
    v_layer: int  # the trained vision blocks (the mmproj carries one more: a copy of the last)
    v_head: int
    proj_ff: int
    text_eps: float = 1e-5
    vision_eps: float = 1e-5  # the reference's nn.LayerNorm default
    rope_base: float = 10000.0
    unused_bias: float = -30.0  # the output bias of every vocabulary row training never used


# -- GPT-2's byte-level BPE -------------------------------------------------------------

# GPT-2's pre-tokenizer, for ASCII text (\p{L} and \p{N} are [A-Za-z] and [0-9] there).
_SPLIT = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


@functools.cache
def _byte_chars() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest from U+0100."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


class Tokenizer:
    """GPT-2's tokenizer over the vocabulary and merges in tests/data/gpt2 (ASCII text only)."""

    def __init__(self) -> None:
        tokens, _, merges = moondream_gguf.gpt2_vocabulary()
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.tokens = tokens
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}

    def encode(self, text: str) -> list[int]:
        if not text.isascii():
            raise ValueError("this tokenizer handles ASCII text only")
        chars = _byte_chars()
        out: list[int] = []
        for word in _SPLIT.findall(text):
            out += [self.ids[p] for p in self._bpe("".join(chars[b] for b in word.encode()))]
        return out

    def decode(self, ids: list[int]) -> str:
        back = {c: b for b, c in _byte_chars().items()}
        raw = bytes(back[c] for i in ids if i != EOS for c in self.tokens[i])
        return raw.decode("utf-8", errors="replace")

    def _bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [
                (self.ranks.get((a, b), 1 << 30), i)
                for i, (a, b) in enumerate(itertools.pairwise(parts))
            ]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts


@functools.cache
def tokenizer() -> Tokenizer:
    return Tokenizer()


# -- the model --------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + eps) * w + b, dtype=np.float32)


def _gelu(x: np.ndarray) -> np.ndarray:
    """The reference's GELU: tanh approximation (nn.GELU(approximate="tanh"), gelu_new)."""
    return np.asarray(0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return np.asarray(e / e.sum(-1, keepdims=True))


class Model:
    """The tiny Moondream from its weights file; float32 arithmetic on the float16 weights."""

    def __init__(self, path: Path = WEIGHTS) -> None:
        with np.load(path, allow_pickle=False) as npz:
            self.w = {k: npz[k].astype(np.float32) for k in npz.files if k not in ("config",)}
            self.config = Config(**json.loads(str(npz["config"])))
        self.vocab_in = self.w.pop("vocab_in").astype(np.int64)
        self.vocab_out = self.w.pop("vocab_out").astype(np.int64)
        self.row = {int(t): i for i, t in enumerate(self.vocab_in)}

    # vision: pixels (size, size, 3) uint8 → (patches, n_embd) image embeddings
    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        c, w = self.config, self.w
        p, n = c.patch, c.image_size // c.patch
        x = (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5  # mean = std = 0.5
        x = x.transpose(2, 0, 1).reshape(3, n, p, n, p).transpose(1, 3, 0, 2, 4)
        x = x.reshape(n * n, 3 * p * p) @ w["vision.patch_embed.weight"].T
        x = x + w["vision.patch_embed.bias"] + w["vision.pos_embed"]
        for i in range(c.v_layer):
            b = f"vision.blocks.{i}."
            h = _layer_norm(x, w[b + "norm1.weight"], w[b + "norm1.bias"], c.vision_eps)
            x = x + self._attention(h, b + "attn.qkv", b + "attn.proj", c.v_head, causal=False)
            h = _layer_norm(x, w[b + "norm2.weight"], w[b + "norm2.bias"], c.vision_eps)
            x = x + self._mlp(h, b + "mlp")
        x = _layer_norm(x, w["vision.norm.weight"], w["vision.norm.bias"], c.vision_eps)
        return self._mlp(x, "projection")

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return np.asarray(x @ self.w[name + ".weight"].T + self.w[name + ".bias"])

    def _mlp(self, x: np.ndarray, name: str) -> np.ndarray:
        return self._linear(_gelu(self._linear(x, name + ".fc1")), name + ".fc2")

    def _attention(
        self, x: np.ndarray, qkv: str, out: str, heads: int, *, causal: bool
    ) -> np.ndarray:
        n, width = x.shape
        d = width // heads
        q, k, v = (
            t.reshape(n, heads, d).transpose(1, 0, 2)
            for t in np.split(self._linear(x, qkv), 3, axis=-1)
        )
        if causal:
            q, k = self._rotary(q), self._rotary(k)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        if causal:
            scores = scores + np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
        y = (_softmax(scores) @ v).transpose(1, 0, 2).reshape(n, width)
        return self._linear(y, out)

    def _rotary(self, x: np.ndarray) -> np.ndarray:
        """Rotary embedding on the first n_rot dimensions of each head, rotate-half form."""
        rot = self.config.n_rot
        inv_freq = 1.0 / self.config.rope_base ** (np.arange(0, rot, 2, dtype=np.float32) / rot)
        angles = np.arange(x.shape[1], dtype=np.float32)[:, None] * inv_freq[None, :]
        cos, sin = (
            np.cos(np.concatenate([angles] * 2, -1)),
            np.sin(np.concatenate([angles] * 2, -1)),
        )
        head, rest = x[..., :rot], x[..., rot:]
        half = np.concatenate([-head[..., rot // 2 :], head[..., : rot // 2]], -1)
        return np.concatenate([head * cos + half * sin, rest], -1)

    def logits(self, image: np.ndarray, tokens: list[int]) -> np.ndarray:
        """Next-token logits over ``vocab_out`` after each of ``tokens``, which follow BOS
        and the ``image`` embeddings: row i is what comes after ``tokens[: i + 1]``."""
        c, w = self.config, self.w
        # A token training never saw has a zero embedding row (as in the GGUF): the last one.
        emb = np.concatenate([w["text.wte"], np.zeros_like(w["text.wte"][:1])])
        unseen = len(emb) - 1
        rows = [self.row.get(t, unseen) for t in tokens]
        x = np.concatenate([emb[[self.row[BOS]]], image, emb[rows]])
        for i in range(c.n_layer):
            b = f"text.h.{i}."
            h = _layer_norm(x, w[b + "ln.weight"], w[b + "ln.bias"], c.text_eps)
            attn = self._attention(h, b + "mixer.Wqkv", b + "mixer.out_proj", c.n_head, causal=True)
            x = x + attn + self._mlp(h, b + "mlp")
        x = x[1 + len(image) :]
        x = _layer_norm(x, w["text.lm_head.ln.weight"], w["text.lm_head.ln.bias"], c.text_eps)
        return self._linear(x, "text.lm_head.linear")

    def prompt(self, question: str, history: tuple[tuple[str, str], ...] = ()) -> list[int]:
        return tokenizer().encode(prompt_text(question, history))

    def answer(
        self, pixels: np.ndarray, question: str, max_tokens: int = 48
    ) -> tuple[list[int], list[float]]:
        """Greedy answer tokens (EOS last, when reached) and, for each, by how much its
        logit led the runner-up's."""
        return self.answer_encoded(self.encode_image(pixels), question, max_tokens)

    def answer_encoded(
        self,
        image: np.ndarray,
        question: str,
        max_tokens: int = 48,
        history: tuple[tuple[str, str], ...] = (),
    ) -> tuple[list[int], list[float]]:
        """:meth:`answer` for an image already encoded (:meth:`encode_image`), after the
        ``history`` turns of a conversation, if any."""
        tokens = self.prompt(question, history)
        out: list[int] = []
        margins: list[float] = []
        for _ in range(max_tokens):
            row = self.logits(image, tokens + out)[-1]
            if row.max() <= self.config.unused_bias:
                raise AssertionError("an unused vocabulary row would tie with the best")
            first, second = np.argsort(row)[-2:][::-1]
            runner_up = max(float(row[second]), self.config.unused_bias)
            out.append(int(self.vocab_out[first]))
            margins.append(float(row[first]) - runner_up)
            if out[-1] == EOS:
                break
        return out, margins
