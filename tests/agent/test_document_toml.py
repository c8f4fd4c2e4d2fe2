"""document.dump writes TOML that tomllib reads back as the same document (issue #24).

The old hand-written writer used json.dumps for strings: JSON escapes a
character outside the BMP as a surrogate pair (``\\ud83d\\ude00``), which TOML
forbids, so an emoji in a description made a policy the daemon rejected.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedcp_agent import document
from tests.harness import ROOT

HOSTILE = ("😀 U+1F600, \"quotes\", 'single', back\\slash, \\u0041 not an escape,\nline\r\n"
           "CRLF\ttab \x00 nul \x7f del \u2028 \ufeff \"\"\" ''' end\\")


def _policy(description: str) -> dict[str, Any]:
    return {
        "policy": {"name": "emoji-test", "description": description,
                   "workloads": [description, "plain"], "tags": ["agent", f"goal:{description}"]},
        "parameters": {"nice": {"field": "group[0].task.nice", "min": -5, "max": 5,
                                "default": 0, "description": description}},
        "group": [{"name": "batch", "description": description,
                   "match": {"pid": [1, 2], "comm": [description]},
                   "task": {"policy": "batch", "nice": 0}}],
    }


def test_a_description_outside_the_bmp_round_trips() -> None:
    doc = _policy("latency for 😀 and 𝄞 users")
    text = document.dump(doc)
    assert tomllib.loads(text) == doc
    assert "😀" in text  # written as itself, readable, not as an escape


def test_hostile_strings_round_trip_and_descriptions_stay_readable() -> None:
    doc = _policy(HOSTILE)
    assert tomllib.loads(document.dump(doc)) == doc
    # Without a carriage return, a description with line breaks is a multi-line string.
    readable = _policy(HOSTILE.replace("\r", ""))
    text = document.dump(readable)
    assert tomllib.loads(text) == readable
    assert '"""' in text and "\nline\n" in text


def test_values_toml_cannot_hold_are_a_type_error() -> None:
    with pytest.raises(TypeError):
        document.dump({"policy": {"name": "x", "description": None}})


def test_every_builtin_policy_round_trips() -> None:
    for path in sorted((ROOT / "policies").rglob("*.toml")):
        doc = tomllib.loads(path.read_text())
        assert tomllib.loads(document.dump(doc)) == doc, path


# Any unicode text (surrogates cannot be encoded, so TOML cannot hold them either).
# The characters that broke or could break a writer come often: escapes, quotes,
# line ends, NUL, DEL, non-BMP.
_CHAR = st.one_of(st.characters(codec="utf-8"),
                  st.sampled_from(['"', "'", "\\", "\n", "\r", "\t", "\x00", "\x7f",
                                   "\U0001f600", "\U0010ffff", "\u2028", "\ufeff"]))
_TEXT = st.text(_CHAR, max_size=40)
_KEY = st.text(_CHAR, min_size=1, max_size=12)
_SCALAR = st.one_of(_TEXT, st.integers(min_value=-(2**63), max_value=2**63 - 1),
                    st.booleans(), st.floats(allow_nan=False))
_TABLE = st.dictionaries(_KEY, st.one_of(_SCALAR, st.lists(_SCALAR, max_size=4),
                                         st.dictionaries(_KEY, _SCALAR, max_size=3)),
                         max_size=5)


@settings(max_examples=300, deadline=None)
@given(description=_TEXT, extra=_TABLE, tags=st.lists(_TEXT, max_size=4))
def test_any_document_round_trips(description: str, extra: dict[str, Any],
                                  tags: list[str]) -> None:
    doc = _policy(description)
    doc["policy"]["tags"] = tags
    doc["group"][0]["task"].update(extra)
    doc["extra"] = extra
    assert tomllib.loads(document.dump(doc)) == doc
