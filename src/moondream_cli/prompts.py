"""Moondream's prompt format, owned by mdream (a GGUF's embedded chat template is never run).

The reference implementation feeds: BOS, the image, then ``\\n\\nQuestion: {q}\\n\\nAnswer:``;
the answer ends at EOS or at the first blank line.
"""

from __future__ import annotations

from .errors import UsageError

LENGTHS = ("short", "normal", "long")
DESCRIBE_QUESTIONS = {
    "short": "Write a short, one-sentence caption for this image.",
    "normal": "Describe this image.",
    "long": "Describe this image in detail.",
}
DESCRIBE_MAX_TOKENS = {"short": 64, "normal": 256, "long": 512}
TAGS_QUESTION = "List descriptive tags for this image, separated by commas."
STOP = "\n\n"


def question_prompt(question: str) -> str:
    """The text that follows the image tokens."""
    return f"\n\nQuestion: {question.strip()}\n\nAnswer:"


def describe_question(length: str) -> str:
    try:
        return DESCRIBE_QUESTIONS[length]
    except KeyError:
        raise UsageError(f"--length must be one of {', '.join(LENGTHS)}, not {length!r}") from None
