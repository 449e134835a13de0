"""Moondream's prompt format, owned by mdream (a GGUF's embedded chat template is never run).

The reference implementation feeds: BOS, the image, then ``\\n\\nQuestion: {q}\\n\\nAnswer:``;
the reference (vikhyat/moondream ``answer_question``, April 2024) ends the answer at EOS only
and strips it. A random or confused model may instead start a new turn, so the two turn
markers are a backstop: an answer also ends where one of :data:`STOP_MARKERS` begins.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from .errors import UsageError

Choice = TypeVar("Choice", bound=Enum)


class Length(str, Enum):
    """How long a caption ``describe`` asks for."""

    SHORT = "short"
    NORMAL = "normal"
    LONG = "long"


class Style(str, Enum):
    """What ``describe`` asks for: sentences, or comma-separated tags (for text-to-image)."""

    CAPTION = "caption"
    TAGS = "tags"


LENGTHS = tuple(length.value for length in Length)
DESCRIBE_QUESTIONS = {
    Length.SHORT: "Write a short, one-sentence caption for this image.",
    Length.NORMAL: "Describe this image.",
    Length.LONG: "Describe this image in detail.",
}
DESCRIBE_MAX_TOKENS = {Length.SHORT: 64, Length.NORMAL: 256, Length.LONG: 512}
TAGS_QUESTION = "List descriptive tags for this image, separated by commas."
TAGS_MAX_TOKENS = 128
ASK_MAX_TOKENS = 256  # an answer's length when nothing else says
# Where the model would start a new turn of the prompt format: the answer ends before either.
# Inner blank lines are kept, as the reference keeps them (multi-paragraph answers).
STOP_MARKERS = ("\n\nQuestion:", "\n\nAnswer:")


# `mdream grep`: a phrase ("a receipt") becomes this yes/no question. The reference was
# trained on VQA-style questions; "Is there …?" is the plainest one that names what to look
# for without presupposing it (VQAScore, Lin et al. 2024, asks "Does this figure show …?",
# a caption-matching wording Moondream2 saw less of), and it is what the tests' trained
# model learned (tests/data/shapes-moondream/README.md). Its score is the model's
# probability of a yes against a no at the first answer token: the words below, with and
# without the leading space the reference's answers start with, as the tokenizer splits
# them (only the single-token forms count).
GREP_QUESTION = "Is there {phrase}?"
YES_WORDS = ("yes", "Yes", "YES")
NO_WORDS = ("no", "No", "NO")


def grep_question(phrase: str) -> str:
    """The yes/no question ``mdream grep`` asks for a phrase; a phrase that is a question
    already ("Is it a receipt?") is asked as written."""
    phrase = phrase.strip().rstrip(".")
    if phrase.endswith("?"):
        return phrase
    return GREP_QUESTION.format(phrase=phrase)


@dataclass(frozen=True)
class Task:
    """A built-in question and the answer length that suits it."""

    question: str
    max_tokens: int


def describe_task(style: Style | str = Style.CAPTION, length: Length | str = Length.NORMAL) -> Task:
    """What ``describe`` asks, for a style and a caption length."""
    if _choice(Style, style, "--style") is Style.TAGS:
        return Task(TAGS_QUESTION, TAGS_MAX_TOKENS)
    chosen = _choice(Length, length, "--length")
    return Task(DESCRIBE_QUESTIONS[chosen], DESCRIBE_MAX_TOKENS[chosen])


def question_prompt(question: str) -> str:
    """The text that follows the image tokens."""
    return f"\n\nQuestion: {question.strip()}\n\nAnswer:"


def chat_prompt(turns: list[tuple[str, str]], question: str) -> str:
    """The text after the image for a conversation's next question, as the reference's
    ``answer_question(..., chat_history=...)`` builds it, with ``sample.py``'s history:
    ``\n\n`` + ``Question: {q}\n\nAnswer: {a}\n\n`` per earlier turn + the question's
    own ``Question: {q}\n\nAnswer:``. With no earlier turn it is :func:`question_prompt`."""
    history = "".join(f"Question: {q.strip()}\n\nAnswer: {a.strip()}\n\n" for q, a in turns)
    return f"\n\n{history}Question: {question.strip()}\n\nAnswer:"


def describe_question(length: Length | str) -> str:
    return describe_task(Style.CAPTION, length).question


def _choice(kind: type[Choice], value: Choice | str, option: str) -> Choice:
    try:
        return kind(value)
    except ValueError:
        names = ", ".join(member.value for member in kind)
        raise UsageError(f"{option} must be one of {names}, not {value!r}") from None
