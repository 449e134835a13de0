"""`mdream chat`: a conversation about one image, the reference's chat history, nothing kept."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, draw_photo, run_mdream
from moondream_cli import Moondream
from moondream_cli.chat import Conversation
from moondream_cli.engine import Engine, EngineOptions, Sampling
from moondream_cli.images import load_image
from moondream_cli.locate import find_pair
from moondream_cli.prompts import chat_prompt, question_prompt
from terminal import Terminal

QUESTIONS = ("What is it?", "What colour is it?", "Where is it?")


def test_the_chat_prompt_is_the_references_history_string() -> None:
    assert chat_prompt([], "What is it?") == question_prompt("What is it?")
    assert chat_prompt([("What is it?", " A cat. ")], "Why?") == (
        "\n\nQuestion: What is it?\n\nAnswer: A cat.\n\nQuestion: Why?\n\nAnswer:"
    )


SAMPLING = Sampling(max_tokens=10)


def _fresh(
    engine: Engine,
    pixels: object,
    turns: list[tuple[str, str]],
    q: str,
    sampling: Sampling = SAMPLING,
) -> str:
    """The reference's way: the whole history string after a freshly encoded image."""
    engine.set_image(pixels, key=object())  # type: ignore[arg-type]
    answer, _ = engine.continue_image(0, engine.tokenize(chat_prompt(turns, q)), sampling)
    return answer


def test_each_turn_equals_the_whole_history_fed_fresh_and_the_image_is_encoded_once(
    tiny_model: Path, photo: Path
) -> None:
    with Engine(find_pair(tiny_model), EngineOptions(threads=2, batch=1)) as engine:
        pixels = load_image(photo, size=engine.image_size)
        chat = Conversation(engine, pixels, SAMPLING)
        engine.timings.reset()
        answers = [chat.ask(q) for q in QUESTIONS]
        assert engine.timings.images == 1  # one encode for the whole session
        later_prompts = engine.timings.prompt_tokens
        whole = len(engine.tokenize(chat_prompt(chat.turns[:2], QUESTIONS[2])))
        assert later_prompts < whole * 2  # earlier turns were not evaluated again
        for i, q in enumerate(QUESTIONS):
            assert answers[i] == _fresh(engine, pixels, chat.turns[:i], q), i


def test_a_conversation_longer_than_the_context_drops_its_oldest_turns(
    tiny_model: Path, photo: Path
) -> None:
    options = EngineOptions(threads=2, batch=1, n_ctx=160)
    with Engine(find_pair(tiny_model), options) as engine:
        pixels = load_image(photo, size=engine.image_size)
        longer = Sampling(max_tokens=24)
        chat = Conversation(engine, pixels, longer)
        for i in range(8):
            answer = chat.ask(f"Question number {i}, what is it?")
            turns, (question, _) = chat.turns[:-1], chat.turns[-1]
            assert answer == _fresh(engine, pixels, turns, question, longer)
        assert chat.dropped > 0 and len(chat.turns) < 8


def test_the_api_conversation_is_the_clis(md: Moondream, photo: Path) -> None:
    with md.chat(photo) as chat:
        first = chat.ask(QUESTIONS[0], sampling=SAMPLING)
        second = chat.ask(QUESTIONS[1], sampling=SAMPLING)
        assert [q for q, _ in chat.turns] == list(QUESTIONS[:2])
    assert md.ask(photo, QUESTIONS[0], sampling=SAMPLING) == first  # a fresh question
    assert second  # the follow-up is asked with its history (checked against the engine above)


@pytest.mark.slow
def test_piped_questions_get_one_answer_a_line_or_jsonl(tiny_model: Path, photo: Path) -> None:
    questions = "".join(f"{q}\n" for q in QUESTIONS).encode()
    text = run_mdream("chat", photo, "-m", tiny_model, "-n", "6", input=questions)
    assert text.returncode == 0, text.stderr
    assert len(text.stdout.decode().splitlines()) == 3
    jsonl = run_mdream("chat", photo, "-m", tiny_model, "-n", "6", "-f", "jsonl", input=questions)
    records = [json.loads(line) for line in jsonl.stdout.decode().splitlines()]
    assert [r["question"] for r in records] == list(QUESTIONS)
    assert [r["answer"] for r in records] == text.stdout.decode().splitlines()
    assert run_mdream("chat", "-", "-m", tiny_model).returncode == 2


@pytest.mark.slow
def test_a_person_asks_two_questions_and_quits(tiny_model: Path, tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    draw_photo().save(image)
    term = Terminal("chat", image, "-m", tiny_model, "-n", "6")
    term.read_until("cat.png> ")
    screens = []
    for question in QUESTIONS[:2]:
        term.screen = ""
        term.type(f"{question}\r")
        screens.append(term.read_until("cat.png> "))  # the answer, then the prompt again
    term.type("/quit\r")
    assert term.exit_code() == 0
    piped = "".join(f"{q}\n" for q in QUESTIONS[:2]).encode()
    answers = run_mdream("chat", image, "-m", tiny_model, "-n", "6", input=piped)
    first, second = answers.stdout.decode().splitlines()
    assert first in screens[0] and second in screens[1]


@pytest.mark.slow
def test_ctrl_c_stops_the_answer_and_keeps_the_session(tiny_model: Path, tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    draw_photo().save(image)
    term = Terminal("chat", image, "-m", tiny_model, "-n", "1500")
    term.read_until("cat.png> ")
    term.screen = ""
    term.type("Describe it at length.\r")
    time.sleep(1.0)  # the answer is streaming
    term.type("\x03")  # Ctrl-C, as the terminal sends it
    term.read_until("stopped (the conversation is as it was")
    term.screen = term.screen.split("stopped (the conversation is as it was", 1)[1]
    term.read_until("cat.png> ")
    term.type("\x04")  # Ctrl-D leaves
    assert term.exit_code() == 0


@pytest.mark.slow
def test_a_chat_session_writes_no_file(tiny_model: Path, photo: Path, tmp_path: Path) -> None:
    # No history file (Ollama keeps ~/.ollama/history; readline can write ~/.python_history).
    from moondream_cli import syscall_audit

    if syscall_audit.missing_tools():
        pytest.fail(f"needs {syscall_audit.missing_tools()}: make test installs them")
    # Bytecode as an installed package has it: a module compiled now would be a finding.
    assert syscall_audit.precompile(ROOT / "src" / "moondream_cli")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HOME": str(tmp_path)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [sys.executable, "-m", "moondream_cli", "chat", str(photo), "-m", str(tiny_model)]
    run = syscall_audit.traced([*command, "-n", "4"], env=env, cwd=tmp_path,
                               stdin=b"What is it?\nAnd then?\n")  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()
    assert len(run.stdout.decode().splitlines()) == 2
    assert not run.findings, run.findings
