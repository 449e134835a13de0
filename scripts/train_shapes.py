"""Train the tiny Moondream of tests/data/shapes-moondream on the CPU: `make train-tiny`.

The April-2024 Moondream2 architecture at a tiny size (../shared/TRAINED.md, REFERENCE.md),
trained in PyTorch (the `train` extra) on the synthetic world of tests/shapes_world.py, then
handed to the numpy reference (tests/shapes_reference.py) for the held-out answers:

    weights.npz     float16 weights under the reference's names, the vocabulary rows used
    training.json   seed, settings, time, loss, and accuracy per question kind
    heldout/        held-out images of the world (files, as mdream reads them)
    golden.jsonl    the reference's greedy answers on them, token for token

Retraining is not byte-reproducible across torch versions and CPUs; the tests hold mdream
to the committed weights and answers, not to a rerun.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

# Spinning OpenMP and OpenBLAS threads wait on each other badly on a shared machine: one
# torch thread measured 4-5 times faster than two there (0.9 s a step against 4), one
# OpenBLAS thread 16 times faster for the numpy reference. See --threads.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

import shapes_reference as ref  # noqa: E402
import shapes_world as world  # noqa: E402

CONFIG = ref.Config(
    n_embd=64, n_ff=256, n_layer=2, n_head=4, n_rot=8,
    image_size=world.IMAGE_SIZE, patch=14, v_embd=32, v_ff=64, v_layer=2, v_head=4, proj_ff=256,
)  # fmt: skip
# How often each kind is trained on, relative to the others (captions and tags are long).
KIND_WEIGHTS = {
    "colour": 0.7, "shape": 1.5, "where": 0.7, "yesno": 4.0, "direction": 2.0,
    "background": 0.5, "caption": 2.0, "tags": 1.0, "json": 1.0,
}  # fmt: skip
# Conversations: a question after 1 to MAX_HISTORY earlier turns about the same image, as
# `mdream chat` asks it (the reference's chat_history). Its accuracy is reported as CHAT.
MAX_HISTORY = 3
CHAT = "chat"


# -- the model, under the reference's names ----------------------------------------------


class MLP(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def rotary(x: torch.Tensor, n_rot: int, base: float, offset: int = 0) -> torch.Tensor:
    """Rotate-half (NEOX) rotary embedding over the first n_rot dims of each head; x is
    (B, H, L, D) at positions offset, offset + 1, ..."""
    inv_freq = 1.0 / base ** (torch.arange(0, n_rot, 2, dtype=torch.float32) / n_rot)
    positions = torch.arange(offset, offset + x.shape[2], dtype=torch.float32)
    angles = positions[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], -1)
    head, rest = x[..., :n_rot], x[..., n_rot:]
    half = torch.cat([-head[..., n_rot // 2 :], head[..., : n_rot // 2]], -1)
    return torch.cat([head * angles.cos() + half * angles.sin(), rest], -1)


def split_heads(x: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """Fused QKV output (B, L, 3W) → q, k, v as (B, H, L, W / H)."""
    b, n, _ = x.shape
    return tuple(t.reshape(b, n, heads, -1).transpose(1, 2) for t in x.chunk(3, dim=-1))


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    b, h, n, d = y.shape
    return y.transpose(1, 2).reshape(b, n, h * d)


def attention(x: torch.Tensor, qkv: nn.Linear, out: nn.Linear, heads: int) -> torch.Tensor:
    """The vision tower's: every patch attends to every patch, scale 1/sqrt(head dim)."""
    q, k, v = split_heads(qkv(x), heads)
    return out(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class VisionAttention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)


class VitBlock(nn.Module):
    def __init__(self, c: ref.Config) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(c.v_embd, eps=c.vision_eps)
        self.attn = VisionAttention(c.v_embd)
        self.norm2 = nn.LayerNorm(c.v_embd, eps=c.vision_eps)
        self.mlp = MLP(c.v_embd, c.v_ff, c.v_embd)
        self.heads = c.v_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + attention(self.norm1(x), self.attn.qkv, self.attn.proj, self.heads)
        return x + self.mlp(self.norm2(x))


class Vision(nn.Module):
    def __init__(self, c: ref.Config) -> None:
        super().__init__()
        self.patch, n = c.patch, (c.image_size // c.patch) ** 2
        self.patch_embed = nn.Linear(3 * c.patch * c.patch, c.v_embd)
        self.pos_embed = nn.Parameter(torch.randn(n, c.v_embd) * 0.02)
        self.blocks = nn.ModuleList(VitBlock(c) for _ in range(c.v_layer))
        self.norm = nn.LayerNorm(c.v_embd, eps=c.vision_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b, _, size, _ = pixels.shape  # (B, 3, size, size), normalised
        p, n = self.patch, size // self.patch
        x = pixels.reshape(b, 3, n, p, n, p).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, -1)
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class Mixer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.Wqkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)


class PhiLayer(nn.Module):
    def __init__(self, c: ref.Config) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(c.n_embd, eps=c.text_eps)
        self.mixer = Mixer(c.n_embd)
        self.mlp = MLP(c.n_embd, c.n_ff, c.n_embd)
        self.heads, self.rot = c.n_head, (c.n_rot, c.rope_base)

    def forward(
        self, prefix: torch.Tensor, text: torch.Tensor, owner: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer over [BOS, image] (``prefix``, one row an image) and over the question
        and answer tokens after it (``text``, row r about image ``owner[r]``). Causal
        attention makes the prefix independent of what follows, so it is computed once an
        image however many questions are asked: the same numbers as whole sequences."""
        hp, ht = self.ln(prefix), self.ln(text)  # attention and MLP in parallel on these
        qp, kp, vp = split_heads(self.mixer.Wqkv(hp), self.heads)
        qt, kt, vt = split_heads(self.mixer.Wqkv(ht), self.heads)
        n = prefix.shape[1]
        qp, kp = rotary(qp, *self.rot), rotary(kp, *self.rot)
        qt, kt = rotary(qt, *self.rot, offset=n), rotary(kt, *self.rot, offset=n)
        yp = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
        keys, values = torch.cat([kp[owner], kt], 2), torch.cat([vp[owner], vt], 2)
        yt = F.scaled_dot_product_attention(qt, keys, values, attn_mask=mask)
        prefix = prefix + self.mixer.out_proj(merge_heads(yp)) + self.mlp(hp)
        text = text + self.mixer.out_proj(merge_heads(yt)) + self.mlp(ht)
        return prefix, text


class Head(nn.Module):
    def __init__(self, c: ref.Config, n_out: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(c.n_embd, eps=c.text_eps)
        self.linear = nn.Linear(c.n_embd, n_out)


class Text(nn.Module):
    def __init__(self, c: ref.Config, n_in: int, n_out: int) -> None:
        super().__init__()
        self.wte = nn.Parameter(torch.randn(n_in, c.n_embd) * 0.02)
        self.h = nn.ModuleList(PhiLayer(c) for _ in range(c.n_layer))
        self.lm_head = Head(c, n_out)


class TinyMoondream(nn.Module):
    def __init__(self, c: ref.Config, n_in: int, n_out: int) -> None:
        super().__init__()
        self.vision = Vision(c)
        self.projection = MLP(c.v_embd, c.proj_ff, c.n_embd)
        self.text = Text(c, n_in, n_out)

    def hidden(
        self, pixels: torch.Tensor, owner: torch.Tensor, bos: int, text: torch.Tensor
    ) -> torch.Tensor:
        """Final-normed hidden states of [BOS, image, text] for every text position; row r
        of ``text`` is about image ``owner[r]``."""
        image = self.projection(self.vision(pixels))
        wte = self.text.wte
        prefix = torch.cat([wte[bos].expand(len(image), 1, -1), image], dim=1)
        x = wte[text]
        n, t = prefix.shape[1], text.shape[1]
        mask = torch.cat([torch.ones(t, n), torch.ones(t, t).tril()], 1).bool()
        for layer in self.text.h:
            prefix, x = layer(prefix, x, owner, mask)
        return self.text.lm_head.ln(x)


# -- data ---------------------------------------------------------------------------------


def _draw(job: tuple[int, int, int]) -> tuple[np.ndarray, list[world.Scene]]:
    seed, start, count = job
    pixels, scenes = np.empty((count, world.IMAGE_SIZE, world.IMAGE_SIZE, 3), np.uint8), []
    for i in range(count):
        scene = world.random_scene(random.Random(f"{seed}:{start + i}"))
        pixels[i] = world.model_pixels(world.decode(world.encode(scene)))
        scenes.append(scene)
    return pixels, scenes


def draw_many(seed: int, count: int, workers: int) -> tuple[np.ndarray, list[world.Scene]]:
    chunk = 500
    jobs = [(seed, s, min(chunk, count - s)) for s in range(0, count, chunk)]
    with multiprocessing.Pool(workers) as pool:
        parts = pool.map(_draw, jobs)
    return np.concatenate([p for p, _ in parts]), [s for _, ss in parts for s in ss]


# A question with the earlier turns of its conversation (question, answer), oldest first.
Asked = tuple[tuple[tuple[str, str], ...], world.QA]


class Vocab:
    """Every world question's prompt and every answer, tokenized once; the GPT-2 ids used as
    input (embedding rows) and as output (head rows) mapped to compact ones. The input rows
    include every token an earlier turn of a conversation can bring (an answer in the
    history is written after "Answer: ", stripped, as the reference wrote it)."""

    def __init__(self) -> None:
        self.tok = tok = ref.tokenizer()
        self.prompts = {q: tok.encode(ref.PROMPT.format(question=q)) for q in world.all_questions()}
        self.answers = {a: [*tok.encode(a), ref.EOS] for a in world.all_answers()}
        turns = [tok.encode(ref.TURN.format(question="", answer=a.strip())) for a in self.answers]
        out = sorted({t for ids in self.answers.values() for t in ids})
        inp = sorted(
            {ref.BOS}
            | {t for ids in [*self.prompts.values(), *self.answers.values(), *turns] for t in ids}
        )
        self.vocab_in, self.vocab_out = np.array(inp), np.array(out)
        self.in_row = {t: i for i, t in enumerate(inp)}
        self.out_row = {t: i for i, t in enumerate(out)}

    def prompt(self, history: tuple[tuple[str, str], ...], question: str) -> list[int]:
        if not history:
            return self.prompts[question]
        return self.tok.encode(ref.prompt_text(question, history))

    def sequence(self, asked: Asked) -> tuple[list[int], list[int]]:
        """Compact input ids (prompt + answer) and targets (-100 where not learned: the
        prompt, the history in it included)."""
        history, qa = asked
        prompt, answer = self.prompt(history, qa.question), self.answers[qa.answer]
        ids = [self.in_row[t] for t in prompt + answer[:-1]]
        targets = [-100] * (len(prompt) - 1) + [self.out_row[t] for t in answer]
        return ids, targets


def batch(vocab: Vocab, qas: list[list[Asked]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids and targets for every (image, question), padded on the right, and which
    image each belongs to."""
    rows = [(i, *vocab.sequence(qa)) for i, asked in enumerate(qas) for qa in asked]
    width = max(len(ids) for _, ids, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (_, seq, tgt) in enumerate(rows):
        ids[r, : len(seq)] = torch.tensor(seq)
        targets[r, : len(tgt)] = torch.tensor(tgt)
    return ids, targets, torch.tensor([i for i, _, _ in rows])


def normalised(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


def sample_questions(scene: world.Scene, rng: random.Random, k: int) -> list[Asked]:
    return [((), qa) for qa in _sample(scene, rng, k)]


def sample_conversation(scene: world.Scene, rng: random.Random, turns: int) -> Asked:
    """A question after ``turns`` earlier turns about the same image, each answered right
    (the conversation a user has with a model that answers right)."""
    *before, last = _sample(scene, rng, turns + 1)
    return tuple((qa.question, qa.answer) for qa in before), last


def _sample(scene: world.Scene, rng: random.Random, k: int) -> list[world.QA]:
    asked = world.questions(scene, rng)
    weights = [KIND_WEIGHTS[qa.kind] for qa in asked]
    picked = []
    for _ in range(k):
        qa = rng.choices(asked, weights)[0]
        if qa.kind == "caption":
            qa = world.QA(qa.kind, rng.choice(world.CAPTION_QUESTIONS), qa.answer)
        picked.append(qa)
    return picked


def loss_and_hits(
    model: TinyMoondream, vocab: Vocab, pixels: torch.Tensor, qas: list[list[Asked]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, targets, owner = batch(vocab, qas)
    hidden = model.hidden(pixels, owner, vocab.in_row[ref.BOS], ids)
    mask = targets >= 0
    logits = model.text.lm_head.linear(hidden[mask])
    # Each answer weighs the same whatever its length: a caption's 16 tokens would otherwise
    # drown a yes/no's two.
    per_token = F.cross_entropy(logits, targets[mask], reduction="none")
    share = (1.0 / mask.sum(1, keepdim=True)).expand_as(mask)[mask]
    loss = (per_token * share).sum() / len(targets)
    wrong = torch.zeros_like(targets, dtype=torch.bool)
    wrong[mask] = logits.argmax(-1) != targets[mask]
    return loss, ~wrong.any(1), owner  # a greedy answer is right iff no forced step is wrong


@torch.no_grad()
def evaluate(
    model: TinyMoondream, vocab: Vocab, pixels: np.ndarray, scenes: list[world.Scene]
) -> dict[str, float]:
    """Exact-answer accuracy per kind (teacher-forced argmax = greedy answer), every question
    of every scene, each caption question."""
    model.eval()
    right: dict[str, list[bool]] = {k: [] for k in (*world.KINDS, CHAT)}
    rng = random.Random(0)
    for start in range(0, len(scenes), 128):
        part = scenes[start : start + 128]
        qas = []
        for scene in part:
            asked = world.questions(scene, rng)
            asked += [
                world.QA("caption", q, world.caption(scene)) for q in world.CAPTION_QUESTIONS[1:]
            ]
            qas.append([((), qa) for qa in asked])
        flat = [qa.kind for asked in qas for _, qa in asked]
        chats = [[sample_conversation(scene, rng, rng.randint(1, MAX_HISTORY))] for scene in part]
        flat += [CHAT] * len(chats)
        tensors = normalised(pixels[start : start + 128])
        _, hits, _ = loss_and_hits(model, vocab, tensors, qas)
        _, chat_hits, _ = loss_and_hits(model, vocab, tensors, chats)
        for kind, hit in zip(flat, hits.tolist() + chat_hits.tolist(), strict=True):
            right[kind].append(hit)
    model.train()
    return {k: sum(v) / len(v) for k, v in right.items()}


def train(args: argparse.Namespace, out: Path) -> dict[str, object]:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started, cpu = time.perf_counter(), time.process_time()
    vocab = Vocab()
    pixels, scenes = draw_many(args.seed, args.images, args.workers)
    val_pixels, val_scenes = draw_many(args.seed + 1, 2000, args.workers)
    drawn = time.perf_counter() - started
    print(f"drew {len(scenes)} + {len(val_scenes)} images in {drawn:.0f} s", flush=True)

    model = TinyMoondream(CONFIG, len(vocab.vocab_in), len(vocab.vocab_out))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = random.Random(args.seed)
    log = []
    for step in range(1, args.steps + 1):
        # warm up, hold, then fall linearly to 5 % over the last `decay` share of the steps
        fall_from = args.steps * (1 - args.decay)
        lr = args.lr * min(
            1.0, step / 200, 1 - 0.95 * max(0.0, step - fall_from) / (args.steps - fall_from)
        )
        for group in opt.param_groups:
            group["lr"] = lr
        pick = [rng.randrange(len(scenes)) for _ in range(args.batch)]
        qas = [sample_questions(scenes[i], rng, args.questions) for i in pick]
        tensors = normalised(pixels[pick])
        loss, _, _ = loss_and_hits(model, vocab, tensors, qas)
        # Conversations apart (their rows are long): one an image, as much as one question.
        chats = [[sample_conversation(scenes[i], rng, rng.randint(1, MAX_HISTORY))] for i in pick]
        chat_loss, _, _ = loss_and_hits(model, vocab, tensors, chats)
        loss = (loss * args.questions + chat_loss) / (args.questions + 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps:
            seconds = time.perf_counter() - started
            line = {
                "step": step,
                "loss": round(loss.item(), 4),
                "lr": lr,
                "seconds": round(seconds),
            }
            if step % (4 * args.log_every) == 0 or step == args.steps:
                line["validation"] = evaluate(model, vocab, val_pixels[:500], val_scenes[:500])
                save_weights(model, vocab, out / "weights.npz")  # a checkpoint
            log.append(line)
            print(json.dumps(line), flush=True)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    final = evaluate(model, vocab, val_pixels, val_scenes)
    print("validation", json.dumps(final), flush=True)
    save_weights(model, vocab, out / "weights.npz")
    params = sum(p.numel() for p in model.parameters())
    return {
        "seed": args.seed,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "golden_only")},
        "config": asdict(CONFIG),
        "parameters": params,
        "torch": torch.__version__,
        "threads": args.threads,
        # wall time, and this process's CPU time (the image drawing's workers not counted):
        # on a machine shared with other work the two tell different stories
        "train_seconds": round(seconds),
        "train_cpu_seconds": round(cpu_seconds),
        "draw_seconds": round(drawn),
        "log": log,
        "validation_torch": final,
    }


def save_weights(model: TinyMoondream, vocab: Vocab, path: Path) -> None:
    arrays = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    arrays["vocab_in"] = vocab.vocab_in.astype(np.int32)
    arrays["vocab_out"] = vocab.vocab_out.astype(np.int32)
    arrays["config"] = np.array(json.dumps(asdict(CONFIG)))
    np.savez_compressed(path, **arrays)


# -- held-out answers from the numpy reference ----------------------------------------------


def reference_accuracy(model: ref.Model, seed: int, count: int) -> dict[str, object]:
    """The reference's greedy accuracy per kind on fresh images, unfiltered."""
    rng = random.Random(f"accuracy:{seed}")
    right: dict[str, list[bool]] = {k: [] for k in (*world.KINDS, CHAT)}
    for i in range(count):
        scene = world.random_scene(random.Random(f"{seed}:accuracy:{i}"))
        image = model.encode_image(world.model_pixels(world.decode(world.encode(scene))))
        for qa in world.questions(scene, rng):
            tokens, _ = model.answer_encoded(image, qa.question)
            right[qa.kind].append(ref.tokenizer().decode(tokens) == qa.answer)
        history, qa = sample_conversation(scene, rng, rng.randint(1, MAX_HISTORY))
        tokens, _ = model.answer_encoded(image, qa.question, history=history)
        right[CHAT].append(ref.tokenizer().decode(tokens) == qa.answer)
    return {k: f"{sum(v)}/{len(v)}" for k, v in right.items()}


def golden(out: Path, seed: int, count: int, min_margin: float) -> dict[str, object]:
    """Held-out images whose every answer leads by more than ``min_margin`` logits at every
    step (so float16 rounding cannot flip one), and the reference's answers on them."""
    model = ref.Model(out / "weights.npz")
    folder = out / "heldout"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    rng = random.Random(f"golden:{seed}")
    records: list[dict[str, object]] = []
    tried = images = answered = 0
    while images < count:
        tried += 1
        # Held-out canvases stay under 224 px a side, which mdream decodes in full (JPEG draft
        # decoding starts at twice the model's 56 px a side, twice over).
        scene = world.random_scene(random.Random(f"{seed}:golden:{tried}"))
        if max(scene.width, scene.height) >= 224:
            continue
        data = world.encode(scene)
        image = model.encode_image(world.model_pixels(world.decode(data)))
        answers = []
        for qa in world.questions(scene, rng):
            tokens, margins = model.answer_encoded(image, qa.question)
            answers.append((qa, tokens, min(margins)))
        if min(m for _, _, m in answers) <= min_margin:
            continue
        name = f"{images:02d}.{'jpg' if scene.jpeg_quality else 'png'}"
        images += 1
        (folder / name).write_bytes(data)
        asked = [
            {
                "kind": qa.kind,
                "question": qa.question,
                "expected": qa.answer,
                "tokens": tokens,
                "min_margin": round(margin, 3),
            }
            for qa, tokens, margin in answers
        ]
        records.append({"image": name, "scene": asdict(scene), "answers": asked})
        answered += len(asked)
    with open(out / "golden.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return {"golden_images": images, "golden_answers": answered, "golden_tried": tried}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ref.DATA)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32, help="images a step")
    parser.add_argument("--questions", type=int, default=6, help="questions an image a step")
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--decay", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=1, help="torch's (see above)")
    parser.add_argument("--workers", type=int, default=2, help="processes drawing images")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--golden", type=int, default=32, help="held-out images")
    parser.add_argument("--golden-only", action="store_true", help="keep weights.npz")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "training.json"
    report = json.loads(report_path.read_text()) if args.golden_only else train(args, args.out)
    model = ref.Model(args.out / "weights.npz")
    t = time.perf_counter()
    report["accuracy_reference"] = reference_accuracy(model, args.seed + 2, 200)
    report.update(golden(args.out, args.seed + 3, args.golden, 1.0))
    report["reference_seconds"] = round(time.perf_counter() - t)
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
