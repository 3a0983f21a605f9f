"""Fuzzing configuration files: a valid file loads, anything else is one clear line, never a traceback.

Documents are built from churnsync's real sections and keys (so most examples get past the TOML parser and reach
the validation of values), with wrong types, out-of-range numbers, NaN, odd text, unknown keys and nested tables;
plus raw bytes (bad encodings, NUL bytes). Hypothesis runs derandomized with a bounded number of examples.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bench_modules import load_bench
from churnsync.config import Settings, load_settings
from churnsync.errors import ConfigError

reliability = load_bench("reliability")
COMMON = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


def known_keys(model: type[BaseModel]) -> dict[str, list[str]]:
    """Section → its keys, from the settings model itself (so new keys are fuzzed too)."""
    sections: dict[str, list[str]] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections[name] = list(annotation.model_fields)
        else:
            sections.setdefault("", []).append(name)
    return sections


def _destination_keys() -> list[str]:
    from churnsync.config import BrazeDestination

    return list(BrazeDestination.model_fields)


SECTIONS = known_keys(Settings)
SECTIONS["destinations.braze"] = _destination_keys()
SECTIONS["destinations.other"] = _destination_keys()

scalar = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.booleans(),
    st.dates(),
    st.sampled_from(
        [
            "",
            "https://rest.iad-01.braze.com",
            "http://braze.example.com",
            "http://127.0.0.1:9",
            "sqlite:///x.db",
            "postgresql+psycopg://nobody@127.0.0.1:1/none",
            "not a url",
            "Europe/Berlin",
            "Mars/Olympus",
            "0 6 * * 1-5",
            "61 25 * * *",
            "daily",
            "weekly",
            "cron",
            "../../etc/passwd",
            "\x00",
            "06:00",
            "25:99",
        ]
    ),
)
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4), max_leaves=6)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    doc: dict[str, dict[str, Any]] = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)) | st.text(min_size=1, max_size=8), max_size=4)):
        keys = SECTIONS.get(section) or ["x"]
        table = doc.setdefault(section, {})
        for key in draw(st.lists(st.sampled_from(keys) | st.text(min_size=1, max_size=10), max_size=5)):
            table[key] = draw(value)
    return doc


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def to_toml(doc: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, table in doc.items():
        if section:
            lines.append("[" + ".".join(json.dumps(part, ensure_ascii=False) for part in section.split(".")) + "]")
        lines += [f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def check_load(path: Path) -> str | None:
    """None when the file is valid; its one-line message otherwise. Anything but ConfigError fails the test."""
    try:
        load_settings(path)
    except ConfigError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1 and str(path) in message, message
        return message
    return None


@settings(max_examples=150, **COMMON)
@given(documents())
def test_any_document_loads_or_names_its_first_problem_in_one_line(doc: dict[str, dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "churnsync.toml"
        path.write_text(to_toml(doc), encoding="utf-8")
        check_load(path)


@settings(max_examples=100, **COMMON)
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_any_bytes_load_or_fail_in_one_line(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "churnsync.toml"
        path.write_bytes(raw)
        check_load(path)


@settings(max_examples=15, **COMMON)
@given(documents())
def test_the_command_line_never_shows_a_traceback(doc: dict[str, dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "churnsync.toml"
        path.write_text(to_toml(doc), encoding="utf-8")
        code, out, err = reliability.cli(
            "sync", "--dry-run", "--out", str(Path(tmp) / "dry.ndjson"), "--config", str(path)
        )
        assert "Traceback" not in out + err and "internal error" not in err, err
        if code != 0:
            reliability.one_line_error(code, out, err)
