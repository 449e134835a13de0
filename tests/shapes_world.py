"""The synthetic world the tiny trained Moondream (tests/data/shapes-moondream) learned.

One filled shape on a background; questions about it with one right answer each. Pure
Pillow and numpy (no torch): the training script draws its data with it, and the tests
draw fresh images with it. The grammar, every range and every template, is written out in
tests/data/shapes-moondream/README.md; keep the two in step.
"""

from __future__ import annotations

import argparse
import io
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 56  # the model's square input (the projector's clip.vision.image_size)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (240, 210, 30),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "pink": (245, 120, 185),
    "black": (20, 20, 20),
}
# "transparent" is drawn with alpha 0 and seen as white (the pixel road flattens onto white).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "beige": (235, 220, 190),
    "black": (0, 0, 0),
}
TRANSPARENT = "transparent"
SHAPES = ("circle", "square", "triangle", "star", "arrow")
DIRECTIONS = ("up", "down", "left", "right")  # arrows only
POSITIONS = ("left", "right", "top", "bottom", "centre")
# Where a position puts the shape's centre, as fractions of the canvas: on corners of the
# model's 14-pixel patches (56 = 4 × 14), give or take PLACE_JITTER.
PLACES = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
PLACE_JITTER = 0.02
# The shape's extent as a fraction of the canvas's width and of its height: drawn regular (a
# circle round) in the model's square view, so stretched the other way in a non-square file.
SIZE = (0.36, 0.44)
SIDE = (40, 320)  # the canvas's geometric-mean side, pixels (log-uniform)
ASPECT = (0.5, 2.0)  # width / height (log-uniform)
# Each channel of the shape's colour varies by up to this much, the background's by half.
JITTER = 12
JPEG_SHARE = 0.4
JPEG_QUALITY = (50, 95)
TRANSPARENT_SHARE = 0.15
ARROW_SHARE = 0.25  # of the scenes; the other four shapes share the rest equally

PLACE_WORDS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}

# The question kinds, in the order reports list them. DESCRIBE, DESCRIBE_SHORT and
# DESCRIBE_LONG are mdream's own `describe` questions, and TAGS its `--style tags` one
# (src/moondream_cli/prompts.py); JSON_QUESTION is what mdream asks for a `--json-schema`
# with the fields colour and shape and no question (src/moondream_cli/grammars.py).
KINDS = ("colour", "shape", "where", "yesno", "direction", "background", "caption", "tags", "json")
COLOUR_QUESTION = "What colour is the shape?"
SHAPE_QUESTION = "What shape is it?"
WHERE_QUESTION = "Where is the shape?"
YESNO_QUESTION = "Is there a {colour} {shape}?"
DIRECTION_QUESTION = "Which way does the arrow point?"
BACKGROUND_QUESTION = "What colour is the background?"
DESCRIBE = "Describe this image."
DESCRIBE_SHORT = "Write a short, one-sentence caption for this image."
DESCRIBE_LONG = "Describe this image in detail."
CAPTION_QUESTIONS = (DESCRIBE, DESCRIBE_SHORT, DESCRIBE_LONG)
TAGS = "List descriptive tags for this image, separated by commas."
JSON_QUESTION = "Extract these fields from the image as JSON: colour, shape."


@dataclass(frozen=True)
class Scene:
    """Everything that decides an image of the world, and so every answer about it."""

    shape: str
    colour: str
    position: str
    background: str  # a BACKGROUNDS name or TRANSPARENT
    width: int
    height: int
    direction: str = "up"  # which way an arrow points (other shapes: unused)
    size: float = 0.35  # SIZE
    x: float = 0.5  # the shape's centre, fractions of the canvas
    y: float = 0.5
    rgb: tuple[int, int, int] | None = None  # the shape's exact colour (None: COLOURS')
    background_rgb: tuple[int, int, int] | None = None
    jpeg_quality: int | None = None  # saved as JPEG at this quality (None: PNG)

    @property
    def seen_background(self) -> str:
        """The background the model sees: a transparent one is flattened onto white."""
        return "white" if self.background == TRANSPARENT else self.background


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str


def random_scene(rng: random.Random, **fixed: object) -> Scene:
    """A scene drawn from the world's distribution (README); ``fixed`` pins any field."""
    shape = str(fixed.get("shape") or _shape(rng))
    background = str(
        fixed.get("background")
        or (TRANSPARENT if rng.random() < TRANSPARENT_SHARE else rng.choice(list(BACKGROUNDS)))
    )
    seen = "white" if background == TRANSPARENT else background
    colour = str(fixed.get("colour") or rng.choice([c for c in COLOURS if c != seen]))
    position = str(fixed.get("position") or rng.choice(POSITIONS))
    side = math.exp(rng.uniform(*map(math.log, SIDE)))
    aspect = math.exp(rng.uniform(*map(math.log, ASPECT)))
    x, y = PLACES[position]
    scene = Scene(
        shape=shape,
        colour=colour,
        position=position,
        background=background,
        width=max(16, round(side * math.sqrt(aspect))),
        height=max(16, round(side / math.sqrt(aspect))),
        direction=rng.choice(DIRECTIONS),
        size=rng.uniform(*SIZE),
        x=x + rng.uniform(-PLACE_JITTER, PLACE_JITTER),
        y=y + rng.uniform(-PLACE_JITTER, PLACE_JITTER),
        rgb=_jitter(COLOURS[colour], JITTER, rng),
        background_rgb=_jitter(BACKGROUNDS[seen], JITTER // 2, rng),
        jpeg_quality=(
            rng.randint(*JPEG_QUALITY)
            if background != TRANSPARENT and rng.random() < JPEG_SHARE
            else None
        ),
    )
    keep = {k: v for k, v in fixed.items() if k not in ("shape", "colour", "background")}
    return replace(scene, **keep)  # type: ignore[arg-type]


def make(
    shape: str,
    colour: str,
    position: str,
    background: str = "white",
    width: int = 120,
    height: int = 90,
    **more: object,
) -> Scene:
    """A scene with its shape in the middle of where ``position`` puts shapes, mid-sized,
    in the named colours exactly, saved as PNG; ``more`` sets any other field."""
    x, y = PLACES[position]
    size = sum(SIZE) / 2
    scene = Scene(shape, colour, position, background, width, height, size=size, x=x, y=y)
    return replace(scene, **more)  # type: ignore[arg-type]


def _shape(rng: random.Random) -> str:
    return "arrow" if rng.random() < ARROW_SHARE else rng.choice(SHAPES[:-1])


def _jitter(rgb: tuple[int, int, int], amount: int, rng: random.Random) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)
    return r, g, b


def draw(scene: Scene) -> Image.Image:
    """The scene as an image: RGB, or RGBA (alpha 0 around the shape) when transparent."""
    w, h = scene.width, scene.height
    fill = scene.rgb or COLOURS[scene.colour]
    if scene.background == TRANSPARENT:
        img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        ink: tuple[int, ...] = (*fill, 255)
    else:
        img = Image.new("RGB", (w, h), scene.background_rgb or BACKGROUNDS[scene.background])
        ink = fill
    rx, ry = scene.size * w / 2, scene.size * h / 2
    cx, cy = scene.x * w, scene.y * h
    d = ImageDraw.Draw(img)
    if scene.shape == "circle":
        d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=ink)
    elif scene.shape == "square":
        d.rectangle((cx - 0.85 * rx, cy - 0.85 * ry, cx + 0.85 * rx, cy + 0.85 * ry), fill=ink)
    else:
        d.polygon(_outline(scene.shape, scene.direction, cx, cy, rx, ry), fill=ink)
    return img


def _outline(
    shape: str, direction: str, cx: float, cy: float, rx: float, ry: float
) -> list[tuple[float, float]]:
    if shape == "triangle":  # points up
        points = [(0.0, -1.0), (-0.95, 0.75), (0.95, 0.75)]
    elif shape == "star":  # five points, one up
        points = [
            (
                (1.0 if i % 2 == 0 else 0.42) * math.sin(i * math.pi / 5),
                -(1.0 if i % 2 == 0 else 0.42) * math.cos(i * math.pi / 5),
            )
            for i in range(10)
        ]
    elif shape == "arrow":  # drawn pointing right, then turned
        points = [(-1.0, -0.22), (0.15, -0.22), (0.15, -0.6), (1.0, 0.0)]
        points += [(0.15, 0.6), (0.15, 0.22), (-1.0, 0.22)]
        turn = {"right": 0, "down": 1, "left": 2, "up": 3}[direction]
        for _ in range(turn):  # 90° clockwise on screen (y grows downwards)
            points = [(-y, x) for x, y in points]
    else:
        raise ValueError(f"not a shape of the world: {shape}")
    return [(cx + x * rx, cy + y * ry) for x, y in points]


def encode(scene: Scene, image: Image.Image | None = None) -> bytes:
    """The scene's file: JPEG at its quality, else PNG."""
    image = image or draw(scene)
    out = io.BytesIO()
    if scene.jpeg_quality is not None:
        image.convert("RGB").save(out, "JPEG", quality=scene.jpeg_quality)
    else:
        image.save(out, "PNG")
    return out.getvalue()


def model_pixels(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """What the reference model sees, (size, size, 3) uint8: alpha flattened onto white, RGB,
    stretched with Pillow's bicubic filter (the reference's ``Resize((378, 378), BICUBIC)``).
    Written here, not taken from mdream, so that training and the golden answers do not
    inherit a mistake in mdream's own pixel road."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        copy: Image.Image = img.copy()
        return copy


# -- questions and answers ----------------------------------------------------------------


def caption(scene: Scene) -> str:
    what = f"{scene.colour} {scene.shape}"
    if scene.shape == "arrow":
        what += f" pointing {scene.direction},"
    return f" A {what} {PLACE_WORDS[scene.position]}, on a {scene.seen_background} background."


def tags(scene: Scene) -> str:
    words = [scene.colour, scene.shape]
    if scene.shape == "arrow":
        words.append(scene.direction)
    words += [scene.position, f"{scene.seen_background} background"]
    return " " + ", ".join(words)


def as_json(scene: Scene) -> str:
    # Spaced as llama.cpp's JSON-schema grammar allows, starting with "{" (its first rule).
    return f'{{"colour": "{scene.colour}", "shape": "{scene.shape}"}}'


def questions(scene: Scene, rng: random.Random | None = None) -> list[QA]:
    """Every question the world asks about ``scene`` with its one right answer; the yes/no
    question names the scene's colour and shape half the time (``rng`` picks; without one,
    it asks about the scene's own)."""
    asked = [
        QA("colour", COLOUR_QUESTION, f" {scene.colour}"),
        QA("shape", SHAPE_QUESTION, f" {scene.shape}"),
        QA("where", WHERE_QUESTION, f" {scene.position}"),
        yes_no(scene, rng),
        QA("background", BACKGROUND_QUESTION, f" {scene.seen_background}"),
        QA("caption", DESCRIBE, caption(scene)),
        QA("tags", TAGS, tags(scene)),
        QA("json", JSON_QUESTION, as_json(scene)),
    ]
    if scene.shape == "arrow":
        asked.insert(4, QA("direction", DIRECTION_QUESTION, f" {scene.direction}"))
    return asked


def yes_no(scene: Scene, rng: random.Random | None = None) -> QA:
    """ "Is there a {colour} {shape}?": half the time (with ``rng``) about a different colour,
    shape or both, answered " no"."""
    colour, shape = scene.colour, scene.shape
    if rng is not None and rng.random() < 0.5:
        # the shape alone is the hard case (the colour matches): half the "no"s
        change = rng.choice(("colour", "shape", "shape", "both"))
        if change != "shape":
            colour = rng.choice([c for c in COLOURS if c != scene.colour])
        if change != "colour":
            shape = rng.choice([s for s in SHAPES if s != scene.shape])
    right = (colour, shape) == (scene.colour, scene.shape)
    return QA(
        "yesno", YESNO_QUESTION.format(colour=colour, shape=shape), " yes" if right else " no"
    )


def all_questions() -> list[str]:
    """Every question text the world can ask."""
    fixed = [COLOUR_QUESTION, SHAPE_QUESTION, WHERE_QUESTION, DIRECTION_QUESTION]
    fixed += [BACKGROUND_QUESTION, *CAPTION_QUESTIONS, TAGS, JSON_QUESTION]
    return fixed + [YESNO_QUESTION.format(colour=c, shape=s) for c in COLOURS for s in SHAPES]


def all_answers() -> list[str]:
    """Every answer text the world can give (captions and tags in every combination)."""
    answers = {f" {w}" for w in (*COLOURS, *SHAPES, *POSITIONS, *DIRECTIONS, *BACKGROUNDS)}
    answers |= {" yes", " no"}
    for colour in COLOURS:
        for shape in SHAPES:
            for position in POSITIONS:
                for background in BACKGROUNDS:
                    for direction in DIRECTIONS if shape == "arrow" else ("up",):
                        scene = Scene(shape, colour, position, background, 1, 1, direction)
                        answers |= {caption(scene), tags(scene), as_json(scene)}
    return sorted(answers)


def main() -> None:
    parser = argparse.ArgumentParser(description="Draw one image of the world into PATH.")
    parser.add_argument("path", type=Path, help="a .png or .jpg to write")
    parser.add_argument("--shape", choices=SHAPES, default="circle")
    parser.add_argument("--colour", choices=list(COLOURS), default="red")
    parser.add_argument("--position", choices=POSITIONS, default="left")
    parser.add_argument("--background", choices=[*BACKGROUNDS, TRANSPARENT], default="white")
    parser.add_argument("--direction", choices=DIRECTIONS, default="up")
    parser.add_argument("--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    args = parser.parse_args()
    scene = make(
        args.shape, args.colour, args.position, args.background, *args.size,
        direction=args.direction,
        jpeg_quality=90 if args.path.suffix.lower() in (".jpg", ".jpeg") else None,
    )  # fmt: skip
    args.path.write_bytes(encode(scene))
    print(f"{args.path}: {caption(scene).strip()}")


if __name__ == "__main__":
    main()
