"""The docs stay true: every setting and command is documented, and the README's commands exist."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel
from typer.core import TyperGroup
from typer.main import get_command

from churnsync.cli import app
from churnsync.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def setting_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += setting_keys(annotation, f"{prefix}{name}.")
        elif typing.get_origin(annotation) is dict and args:
            value = typing.get_args(args[1])[0] if typing.get_args(args[1]) else args[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                keys += setting_keys(value, f"{prefix}{name}.<name>.")
            else:
                keys.append(prefix + name)
        else:
            keys.append(prefix + name)
    return keys


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    keys = setting_keys(Settings)
    assert len(keys) > 20
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing, f"docs/configuration.md lacks: {missing}"


def test_every_command_has_help_and_docs() -> None:
    doc = (ROOT / "docs/cli.md").read_text(encoding="utf-8")
    group = get_command(app)
    assert isinstance(group, TyperGroup)
    commands = group.commands
    assert {"init", "generate", "run", "demo", "emulator", "runs", "history"} <= set(commands)
    for name, command in commands.items():
        assert command.help and command.help.strip(), f"`churnsync {name}` has no help"
        assert f"churnsync {name}" in doc, f"docs/cli.md does not document `churnsync {name}`"
        for param in command.params:
            if param.param_type_name == "option":
                assert getattr(param, "help", None), f"`churnsync {name}` option {param.name} has no help"


def test_readme_quick_start_uses_the_makefile() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\s*(make \w+)", quick, flags=re.M)
    assert commands == ["make demo", "make test"]
    for command in commands:
        target = command.split()[1]
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no target {target}"
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    assert "make test" in ci
