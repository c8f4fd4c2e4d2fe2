"""Where a value of a TOML document is: a map from a JSON path to the line it is on.

``tomllib`` keeps no positions, so the text is scanned once: table headers
(``[a.b]``, ``[[a]]`` with the index of each array-of-tables entry), and
``key = value`` lines (dotted keys included).  Values inside an inline
table or an array map to the line of their key (:meth:`LineMap.line`
walks up the path until it knows one), which is where a reader looks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Path = tuple[str | int, ...]
_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = re.compile(rf"\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*")
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]\]?")


def _keys(dotted: str) -> list[str]:
    parts = re.findall(_KEY, dotted)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _scan_value(text: str, state: list[str]) -> None:
    """Update ``state`` (open brackets and string quotes) across ``text``."""
    i = 0
    while i < len(text):
        if state and state[-1] in ("'''", '"""'):
            end = text.find(state[-1], i)
            if end < 0:
                return
            state.pop()
            i = end + 3
            continue
        ch = text[i]
        if text.startswith(("'''", '"""'), i):
            state.append(text[i:i + 3])
            i += 3
        elif ch in "\"'":
            j = i + 1
            while j < len(text) and text[j] != ch:
                j += 2 if ch == '"' and text[j] == "\\" else 1
            i = j + 1
        elif ch == "#":
            return
        elif ch in "[{":
            state.append(ch)
            i += 1
        elif ch in "]}":
            if state:
                state.pop()
            i += 1
        else:
            i += 1


class LineMap:
    """Line numbers (1-based) of the tables and keys of one TOML text."""

    def __init__(self, text: str) -> None:
        self.lines: dict[Path, int] = {}
        arrays: dict[tuple[str, ...], int] = {}
        table: Path = ()
        state: list[str] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            if state:  # inside a multi-line string or array
                _scan_value(raw, state)
                continue
            header = _HEADER.match(raw)
            if header:
                keys = _keys(header.group(2))
                table = self._resolve(keys, arrays, is_array=header.group(1) == "[[")
                self.lines.setdefault(table, number)
                self.lines.setdefault(table[:-1], number)  # an array of tables: its first
                continue
            match = _DOTTED.match(raw)
            if not match or raw.lstrip().startswith("#") or "=" not in raw[match.end():][:1]:
                continue
            path = table + tuple(_keys(match.group(1)))
            self.lines.setdefault(path, number)
            _scan_value(raw[match.end() + 1:], state)

    def _resolve(self, keys: list[str], arrays: dict[tuple[str, ...], int],
                 is_array: bool) -> Path:
        path: list[str | int] = []
        for i, key in enumerate(keys):
            path.append(key)
            prefix = tuple(str(k) for k in path)
            last = i == len(keys) - 1
            if last and is_array:
                arrays[prefix] = arrays.get(prefix, -1) + 1
                path.append(arrays[prefix])
            elif prefix in arrays:
                path.append(arrays[prefix])
        return tuple(path)

    def line(self, path: Sequence[str | int]) -> int:
        """The line of ``path`` or of its nearest ancestor that has one (0: none)."""
        here = tuple(path)
        while here:
            if here in self.lines:
                return self.lines[here]
            here = here[:-1]
        return 0
