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

import json
import re
from dataclasses import dataclass, field

from .dockerfile_shell import DEFAULT_ESCAPE, GO_SPACE, ShellError, ShellLex

_RE_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_RE_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_RE_HEREDOC = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
_RE_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)
_VALID_DIRECTIVES = ("syntax", "escape", "check")
_HEREDOC_COMMANDS = frozenset({"add", "copy", "run"})
_MAYBE_JSON = frozenset({"cmd", "entrypoint", "run", "shell"})
_MAYBE_JSON_LIST = frozenset({"add", "copy", "volume"})
_WHITESPACE_LIST = frozenset({"expose", "from"})
_STRING = frozenset({"maintainer", "stopsignal", "user", "workdir"})
_KNOWN = (
    _MAYBE_JSON | _MAYBE_JSON_LIST | _WHITESPACE_LIST | _STRING
    | {"arg", "env", "label", "healthcheck", "onbuild"}
)


def is_go_space(ch: str) -> bool:
    return ch in GO_SPACE


def go_trim_space(s: str) -> str:
    return go_trim_left(s).rstrip("".join(GO_SPACE))


def go_trim_left(s: str) -> str:
    return s.lstrip("".join(GO_SPACE))


class LexError(ValueError):
    """The text is not a Dockerfile BuildKit would accept. ``line`` is 1-based."""

    def __init__(self, message: str, line: int, end_line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.end_line = end_line if end_line is not None else line


@dataclass(frozen=True)
class Heredoc:
    name: str
    fd: int
    expand: bool
    chomp: bool
    content: str = ""


@dataclass(frozen=True)
class Instruction:
    """One instruction: its physical lines ``[start, end)`` (0-based) and what BuildKit sees."""

    start: int
    end: int
    keyword: str  # as written: "RUN", "run", "Run"
    flags: tuple[str, ...]  # builder flags after processing, as BuildKit's Node.Flags
    flags_raw: str  # the flags as written in the logical line
    args: str  # the rest of the logical line after the flags, trimmed
    logical: str  # the logical line: continuations joined, comments and empty lines dropped
    json: tuple[str, ...] | None  # exec form: the JSON array's strings; None for shell form
    heredocs: tuple[Heredoc, ...]
    values: tuple[str | Instruction, ...]  # the node's arguments as BuildKit's dump shows them
    sub: Instruction | None = None  # the trigger instruction of an ONBUILD
    body_start: int = 0  # first line of the heredoc bodies (== end when there are none)
    unterminated: bool = False  # the file ended inside this instruction's line continuation

    @property
    def cmd(self) -> str:
        return self.keyword.lower()

    @property
    def line(self) -> int:
        """1-based number of the first line, as BuildKit reports it."""
        return self.start + 1


@dataclass
class Lexed:
    """A lexed Dockerfile: its physical lines (with their endings) and its instructions."""

    text: str
    lines: list[str]
    instructions: list[Instruction]
    escape: str
    directives: dict[str, str] = field(default_factory=dict)
    bom: bool = False


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
                f"Syntax error - can't find = in {_go_quote(w)}. "
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


def _go_quote(s: str) -> str:
    """Go's strconv.Quote."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif 0xDC80 <= o <= 0xDCFF:  # an undecodable byte kept by surrogateescape
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def dump_instruction(ins: Instruction) -> str:
    parts = [ins.cmd]
    if ins.flags:
        parts.append(" [" + " ".join(_go_quote(f) for f in ins.flags) + "]")
    for v in ins.values:
        parts.append(" (" + dump_instruction(v) + ")" if isinstance(v, Instruction)
                     else " " + _go_quote(v))
    return "".join(parts).strip()


def dump(lexed: Lexed) -> str:
    """The text BuildKit's ``Node.Dump()`` prints for the whole file (without the last newline)."""
    return "\n".join("(" + dump_instruction(i) + ")" for i in lexed.instructions)
