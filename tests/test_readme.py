"""The README's commands, as a new user types them: every ``lampo`` command parses (``--print_config``: the
config files, every field and value), and the Python example runs (one step instead of forty)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lampo_pl.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def lampo_commands() -> list[list[str]]:
    """``lampo fit|validate|test ...`` lines of the README's bash blocks, comments dropped."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["lampo"] and words[1:2] and words[1] in ("fit", "validate", "test"):
                commands.append(words[1:])
    return commands


def test_readme_has_the_commands_a_user_needs() -> None:
    # Fails if the extraction finds nothing (a renamed fence, say), so the test below cannot pass vacuously.
    subcommands = {words[0] for words in lampo_commands()}
    assert {"fit", "validate"} <= subcommands, subcommands
    assert "make demo" in README.read_text() and "make test" in README.read_text()


@pytest.mark.parametrize("words", lampo_commands(), ids=" ".join)
def test_readme_lampo_command_parses(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    if "--help" in words:
        words = [w for w in words if w != "--help"]
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--print_config"])
    captured = capsys.readouterr()
    assert exit_.value.code in (0, None), captured.err
    assert "model:" in captured.out


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (example,) = [b for b in readme_blocks("python") if "LamPOModule(" in b]
    assert "max_steps=40" in example
    monkeypatch.chdir(tmp_path)
    code = example.replace("max_steps=40", "max_steps=1, logger=False, enable_checkpointing=False")
    exec(compile(code, "README.md", "exec"), {})
