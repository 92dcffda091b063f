"""A lossless Dockerfile lexer that draws instruction boundaries exactly where BuildKit does.

It follows the rules of BuildKit's ``frontend/dockerfile/parser`` (which the legacy Docker builder
vendors too): parser directives only at the very top, the escape character (``\\`` or a
backtick) as line continuation, comment and empty lines skipped inside continuations, heredocs on
RUN/COPY/ADD (also behind ONBUILD) with their bodies ending the instruction, JSON (exec) form with
a fallback to shell form when the JSON is invalid, and the per-instruction argument rules that
make some inputs errors (``ENV`` without a value, a JSON array holding a non-string).

Nothing is normalised away: each :class:`Instruction` knows the physical lines it spans, so a
rewriter can replace whole spans and hand every other byte back unchanged. ``tests/corpus`` holds
BuildKit's own parser test files; the tests check :func:`dump` against their ``result`` files.

Where BuildKit works on bytes and this module on ``str``, the text is decoded with
``surrogateescape`` so that every input byte survives the round trip.
"""
from __future__ import annotations

import re

from .dockerfile_args import (
    _can_contain_heredoc,
    chomp_heredoc,
    heredocs_from_line,
    node_from_line,
    parse_heredoc,
    parse_json_array,
    parse_words,
    split_command,
)
from .dockerfile_nodes import (
    Heredoc,
    Instruction,
    Lexed,
    LexError,
    go_quote,
    go_trim_left,
)
from .dockerfile_shell import DEFAULT_ESCAPE

_RE_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_VALID_DIRECTIVES = ("syntax", "escape", "check")

# The lexer's API also names what its stages produce and parse (dockerfile_nodes, dockerfile_args).
__all__ = [
    "Heredoc",
    "Instruction",
    "LexError",
    "Lexed",
    "chomp_heredoc",
    "close_continuation",
    "dump",
    "dump_instruction",
    "heredocs_from_line",
    "lex",
    "node_from_line",
    "parse_heredoc",
    "parse_json_array",
    "parse_words",
    "split_command",
    "split_lines",
]


# --- the scanner ------------------------------------------------------------------------------


def split_lines(text: str) -> list[str]:
    """Physical lines with their endings; only ``\\n`` ends a line (a lone CR does not)."""
    lines = text.split("\n")
    out = [ln + "\n" for ln in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def _trim_newline(s: str) -> str:
    return s.rstrip("\r\n")


def _is_comment(s: str) -> bool:
    s = go_trim_left(s)
    return s[:1] == "#"


class _Directives:
    def __init__(self) -> None:
        self.escape = DEFAULT_ESCAPE
        self.done = False
        self.seen: dict[str, str] = {}
        self._cont = _continuation_regex(DEFAULT_ESCAPE)

    def parse_line(self, line: str) -> None:
        if self.done:
            return
        if not line.startswith("#"):
            self.done = True
            return
        m = _RE_DIRECTIVE.match(go_trim_left(line[1:]))
        if not m or m.group(1).lower() not in _VALID_DIRECTIVES:
            self.done = True
            return
        key, value = m.group(1).lower(), m.group(2)
        if key in self.seen:
            raise ValueError(f"only one {key} parser directive can be used")
        self.seen[key] = value
        if key == "escape":
            if value not in ("`", "\\"):
                raise ValueError(f"invalid escape token '{value}' does not match ` or \\")
            self.escape = value
            self._cont = _continuation_regex(value)

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        m = self._cont.search(line)
        if m:
            return line[: m.start()] + (m.group(1) or ""), False
        return line, True


def close_continuation(lines: list[str], escape: str) -> list[str]:
    """The lines of an instruction left open at the end of the file, with the dangling escape
    characters removed: the logical line stays the same, and a line added after it is no longer
    joined to it."""
    cont = _continuation_regex(escape)
    out = list(lines)
    for k in range(len(out) - 1, -1, -1):
        body = _trim_newline(out[k])
        if k > 0 and (_is_comment(body) or not go_trim_left(body)):
            continue
        m = cont.search(body)
        if not m:
            break
        stripped = body[: m.start()] + (m.group(1) or "")
        out[k] = stripped + out[k][len(body):]
        if go_trim_left(stripped):
            break
    return out


def _continuation_regex(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")


def lex(text: str) -> Lexed:
    """Lex a Dockerfile (already decoded with ``surrogateescape``). Raises LexError."""
    lines = split_lines(text)
    d = _Directives()
    instructions: list[Instruction] = []
    bom = text.startswith("\ufeff")
    i = 0
    n = len(lines)

    def process(raw: str, strip_left: bool, lineno: int) -> str:
        tok = _trim_newline(raw)
        if strip_left:
            tok = go_trim_left(tok)
        try:
            d.parse_line(tok)
        except ValueError as e:
            raise LexError(str(e), lineno) from None
        return "" if _is_comment(tok) else tok

    while i < n:
        raw = lines[i]
        if i == 0 and bom:
            raw = raw[1:]
        tok = process(raw, True, i + 1)
        start = i
        i += 1
        tok, end_of_line = d.trim_continuation(tok)
        if end_of_line and not tok:
            continue
        buf = [tok]
        while not end_of_line and i < n:
            raw = lines[i]
            tok = process(raw, False, i + 1)
            i += 1
            if _is_comment(raw):
                continue
            if not go_trim_left(_trim_newline(tok)):
                continue
            tok, end_of_line = d.trim_continuation(tok)
            buf.append(tok)
        logical = "".join(buf)
        ins = node_from_line(logical, d.escape, start, i)
        ins = _replace(ins, body_start=i, unterminated=not end_of_line)
        if _can_contain_heredoc(ins) and "<<" in logical:
            try:
                docs = heredocs_from_line(logical)
            except LexError as e:
                raise LexError(e.message, start + 1, i) from None
            filled: list[Heredoc] = []
            for doc in docs:
                body: list[str] = []
                terminated = False
                while i < n:
                    raw = lines[i]
                    i += 1
                    cand = _trim_newline(raw)
                    if doc.chomp:
                        cand = cand.lstrip("\t")
                    if cand == doc.name:
                        terminated = True
                        break
                    body.append(raw)
                if not terminated:
                    raise LexError("unterminated heredoc", start + 1, i)
                filled.append(Heredoc(doc.name, doc.fd, doc.expand, doc.chomp, "".join(body)))
            ins = _replace(ins, end=i, heredocs=tuple(filled))
        else:
            ins = _replace(ins, end=i)
        instructions.append(ins)
    if not instructions:
        raise LexError("file with no instructions", max(n, 1))
    return Lexed(text, lines, instructions, d.escape, dict(d.seen), bom)


def _replace(ins: Instruction, **kw: object) -> Instruction:
    from dataclasses import replace

    return replace(ins, **kw)  # type: ignore[arg-type]


# --- BuildKit's AST dump, for comparing with its parser test files -----------------------------


def dump_instruction(ins: Instruction) -> str:
    parts = [ins.cmd]
    if ins.flags:
        parts.append(" [" + " ".join(go_quote(f) for f in ins.flags) + "]")
    for v in ins.values:
        parts.append(" (" + dump_instruction(v) + ")" if isinstance(v, Instruction)
                     else " " + go_quote(v))
    return "".join(parts).strip()


def dump(lexed: Lexed) -> str:
    """The text BuildKit's ``Node.Dump()`` prints for the whole file (without the last newline)."""
    return "\n".join("(" + dump_instruction(i) + ")" for i in lexed.instructions)
