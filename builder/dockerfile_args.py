"""BuildKit's line parsers, one instruction at a time: heredoc markers, the builder flags
(``--mount=...``), the JSON (exec) form, and each instruction's own argument rules, giving the
:class:`Instruction` the scanner (``dockerfile_lex.py``) records for a logical line.
"""

from __future__ import annotations

import json
import re

from .dockerfile_nodes import (
    Heredoc,
    Instruction,
    LexError,
    go_quote,
    go_trim_left,
    go_trim_space,
)
from .dockerfile_shell import GO_SPACE, ShellError, ShellLex

_RE_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_RE_HEREDOC = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
_RE_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)
_HEREDOC_COMMANDS = frozenset({"add", "copy", "run"})
_MAYBE_JSON = frozenset({"cmd", "entrypoint", "run", "shell"})
_MAYBE_JSON_LIST = frozenset({"add", "copy", "volume"})
_WHITESPACE_LIST = frozenset({"expose", "from"})
_STRING = frozenset({"maintainer", "stopsignal", "user", "workdir"})


# --- heredocs ---------------------------------------------------------------------------------


def parse_heredoc(word: str) -> Heredoc | None:
    """A heredoc word (``<<EOF``, ``<<-'EOF'``, ``3<<EOF``) as BuildKit reads it, or None."""
    m = _RE_HEREDOC.match(word)
    if not m:
        return None
    fd = int(m.group(1)) if m.group(1) else 0
    chomp = m.group(2) == "-"
    rest = m.group(3)
    if not rest:
        return None
    try:
        words = ShellLex(skip_unset=True).process_words(rest)
        if len(words) != 1:
            return None
        raw = ShellLex(skip_unset=True, raw_quotes=True).process_words(rest)
    except ShellError as e:
        raise LexError(f"failed to process {rest!r}: {e}", 0) from None
    if len(raw) != len(words):
        raise LexError(f"internal lexing of heredoc produced inconsistent results: {rest}", 0)
    word0, raw0 = words[0], raw[0]
    expand = (word0.count("'") + word0.count('"')) == (raw0.count("'") + raw0.count('"'))
    return Heredoc(name=word0, fd=fd, expand=expand, chomp=chomp)


def heredocs_from_line(line: str) -> list[Heredoc]:
    try:
        words = ShellLex(raw_quotes=True, raw_escapes=True, skip_unset=True).process_words(line)
    except ShellError:
        words = []  # BuildKit ignores this error: no heredocs then
    return [h for h in (parse_heredoc(w) for w in words) if h is not None]


def chomp_heredoc(content: str) -> str:
    return _RE_LEADING_TABS.sub("", content)


# --- per-instruction argument parsing (BuildKit's line parsers) ------------------------------


class _NotJSON(Exception):
    pass


def _reject_constant(name: str) -> object:
    raise _NotJSON(name)  # Go's JSON has no NaN/Infinity: a syntax error, so shell form


def parse_json_array(rest: str) -> tuple[str, ...] | None:
    """The strings of a JSON array (exec form), None when it is not JSON (shell form).

    Raises LexError for an array holding anything but strings, as BuildKit does.
    """
    rest = go_trim_left(rest)
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest, parse_constant=_reject_constant)
    except (ValueError, _NotJSON):
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise LexError(
            "when using JSON array syntax, arrays must be comprised of strings only", 0)
    return tuple(value)


def parse_words(rest: str, escape: str) -> list[str]:
    """BuildKit's parseWords: split on spaces, keep quotes and escapes in the words."""
    words: list[str] = []
    buf: list[str] = []
    phase = 0  # 0 spaces, 1 word, 2 quote
    quote = ""
    blank_ok = False
    i = 0
    n = len(rest)
    while i <= n:
        ch = rest[i] if i < n else ""
        if phase == 0:
            if i == n:
                break
            if ch in GO_SPACE:
                i += 1
                continue
            phase = 1
        if phase in (1, 2) and i == n:
            if blank_ok or buf:
                words.append("".join(buf))
            break
        if phase == 1:
            if ch in GO_SPACE:
                phase = 0
                if blank_ok or buf:
                    words.append("".join(buf))
                buf = []
                blank_ok = False
                i += 1
                continue
            if ch in ("'", '"'):
                quote = ch
                blank_ok = True
                phase = 2
            if ch == escape:
                if i + 1 == n:
                    i += 1
                    continue
                buf.append(ch)
                i += 1
                ch = rest[i]
            buf.append(ch)
            i += 1
            continue
        if phase == 2:
            if ch == quote:
                phase = 1
            if ch == escape and quote != "'":
                if i + 1 == n:
                    phase = 1
                    i += 1
                    continue
                i += 1
                buf.append(ch)
                ch = rest[i]
            buf.append(ch)
            i += 1
    return words


def _parse_name_val(rest: str, key: str, escape: str) -> tuple[str, ...]:
    words = parse_words(rest, escape)
    if not words:
        return ()
    if "=" not in words[0]:
        parts = _RE_WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise LexError(f"{key} must have two arguments", 0)
        return (parts[0], parts[1], "")
    out: list[str] = []
    for w in words:
        if "=" not in w:
            raise LexError(
                f"Syntax error - can't find = in {go_quote(w)}. "
                "Must be of the form: name=value", 0)
        k, v = w.split("=", 1)
        out += [k, v, "="]
    return tuple(out)


def _values(cmd: str, rest: str, escape: str) -> tuple[tuple[str | Instruction, ...], bool]:
    """(node values, is_json) for an instruction's arguments."""
    if cmd in _MAYBE_JSON:
        if rest == "":
            return (), False
        arr = parse_json_array(rest)
        return ((arr, True) if arr is not None else ((rest,), False))
    if cmd in _MAYBE_JSON_LIST:
        arr = parse_json_array(rest)
        if arr is not None:
            return arr, True
        return (tuple(_RE_WHITESPACE.split(rest)) if rest else ()), False
    if cmd in _WHITESPACE_LIST:
        return (tuple(_RE_WHITESPACE.split(rest)) if rest else ()), False
    if cmd in _STRING:
        return ((rest,) if rest else ()), False
    if cmd == "arg":
        return tuple(parse_words(rest, escape)), False
    if cmd in ("env", "label"):
        return _parse_name_val(rest, "ENV" if cmd == "env" else "LABEL", escape), False
    if cmd == "healthcheck":
        sep = 0
        while sep < len(rest) and rest[sep] not in GO_SPACE:
            sep += 1
        nxt = sep
        while nxt < len(rest) and rest[nxt] in GO_SPACE:
            nxt += 1
        if sep == 0:
            return (), False
        inner, is_json = _values("cmd", rest[nxt:], escape)
        return (rest[:sep], *inner), is_json
    return ("",), False  # an unknown instruction: BuildKit keeps an empty node


def _extract_flags(line: str, escape: str) -> tuple[str, list[str]]:
    """BuildKit's extractBuilderFlags, byte by byte as in Go: (remaining text, flags)."""
    data = line.encode("utf-8", "surrogateescape")
    esc = escape.encode()[0]
    words: list[str] = []
    buf = bytearray()
    phase = 0
    quote = 0
    blank_ok = False
    pos = 0
    n = len(data)

    def dec(b: bytes) -> str:
        return b.decode("utf-8", "surrogateescape")

    while pos <= n:
        ch = data[pos] if pos < n else 0
        if phase == 0:
            if pos == n:
                break
            if chr(ch) in GO_SPACE:
                pos += 1
                continue
            if ch != ord("-") or pos + 1 == n or data[pos + 1] != ord("-"):
                return dec(data[pos:]), words
            phase = 1
        if phase in (1, 2) and pos == n:
            word = dec(bytes(buf))
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if phase == 1:
            if chr(ch) in GO_SPACE:
                word = dec(bytes(buf))
                phase = 0
                if word == "--":
                    return dec(data[pos:]), words
                if blank_ok or word:
                    words.append(word)
                buf = bytearray()
                blank_ok = False
                pos += 1
                continue
            if ch in (ord("'"), ord('"')):
                quote = ch
                blank_ok = True
                phase = 2
                pos += 1
                continue
            if ch == esc:
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = data[pos]
            buf.append(ch)
            pos += 1
            continue
        if phase == 2:
            if ch == quote:
                phase = 1
                pos += 1
                continue
            if ch == esc:
                if pos + 1 == n:
                    phase = 1
                    pos += 1
                    continue
                pos += 1
                ch = data[pos]
            buf.append(ch)
            pos += 1
    return "", words


def split_command(line: str, escape: str) -> tuple[str, list[str], str, str]:
    """(command word, flags, args, raw flags text) of a logical line."""
    parts = _RE_WHITESPACE.split(go_trim_space(line), maxsplit=1)
    if len(parts) < 2:
        return parts[0], [], "", ""
    rest, flags = _extract_flags(parts[1], escape)
    flags_raw = parts[1][: len(parts[1]) - len(rest)].rstrip(" \t")
    return parts[0], flags, go_trim_space(rest), flags_raw


def node_from_line(line: str, escape: str, start: int = 0, end: int = 0) -> Instruction:
    keyword, flags, args, flags_raw = split_command(line, escape)
    cmd = keyword.lower()
    sub: Instruction | None = None
    values: tuple[str | Instruction, ...]
    is_json = False
    try:
        if cmd == "onbuild":
            sub = node_from_line(args, escape, start, end) if args else None
            values = (sub,) if sub is not None else ()
        else:
            values, is_json = _values(cmd, args, escape)
    except LexError as e:
        raise LexError(e.message, start + 1, end) from None
    return Instruction(
        start=start,
        end=end,
        keyword=keyword,
        flags=tuple(flags),
        flags_raw=flags_raw,
        args=args,
        logical=line,
        json=tuple(v for v in values if isinstance(v, str)) if is_json else None,
        heredocs=(),
        values=values,
        sub=sub,
    )


def _can_contain_heredoc(ins: Instruction) -> bool:
    node = ins.sub if ins.cmd == "onbuild" and ins.sub is not None else ins
    return node.cmd in _HEREDOC_COMMANDS and node.json is None
