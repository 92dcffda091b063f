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
import unicodedata
from dataclasses import dataclass, field

DEFAULT_ESCAPE = "\\"

# Go's unicode.IsSpace; Python's str.isspace() also counts \x1c-\x1f, which Go does not.
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
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
    return ch in _GO_SPACE


def go_trim_space(s: str) -> str:
    return go_trim_left(s).rstrip("".join(_GO_SPACE))


def go_trim_left(s: str) -> str:
    return s.lstrip("".join(_GO_SPACE))


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


# --- shell word processing (BuildKit's shell.Lex, as far as the parser and FROM need it) ---------

_EOF = ""


class ShellError(ValueError):
    pass


class _Words:
    def __init__(self) -> None:
        self.buf = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch in _GO_SPACE:
            if self.in_word and self.buf:
                self.words.append(self.buf)
                self.buf = ""
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.buf += ch
        self.in_word = True

    def add_string(self, s: str) -> None:
        for ch in s:
            self.add_char(ch)

    def add_raw_string(self, s: str) -> None:
        self.buf += s
        self.in_word = True

    def get(self) -> list[str]:
        if self.buf:
            self.words.append(self.buf)
            self.buf = ""
            self.in_word = False
        return self.words


def _is_letter(ch: str) -> bool:
    return ch.isalpha()


def _is_digit(ch: str) -> bool:
    return len(ch) == 1 and unicodedata.category(ch) == "Nd"


class ShellLex:
    """Word splitting and ``$VAR`` expansion with BuildKit's rules.

    ``env`` None means "no variables" (like BuildKit's emptyEnvs); with ``skip_unset`` an unset
    variable stays as written, otherwise it expands to the empty string.
    """

    def __init__(
        self,
        escape: str = DEFAULT_ESCAPE,
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_unset: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_unset = skip_unset
        self.env = env or {}
        self._s = ""
        self._i = 0

    def process_words(self, text: str) -> list[str]:
        self._s, self._i = text, 0
        return self._stop_on(_EOF, self.raw_escapes)[1]

    def process_word(self, text: str) -> str:
        self._s, self._i = text, 0
        return self._stop_on(_EOF, self.raw_escapes)[0]

    def _peek(self) -> str:
        return self._s[self._i] if self._i < len(self._s) else _EOF

    def _next(self) -> str:
        ch = self._peek()
        if ch:
            self._i += 1
        return ch

    def _stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            result: list[str] = []
            words = _Words()
            while self._peek() != _EOF:
                ch = self._peek()
                if stop != _EOF and ch == stop:
                    self._next()
                    return "".join(result), words.get()
                if ch in "$<'\"":
                    if ch == "$":
                        tmp = self._dollar()
                        words.add_string(tmp)
                    else:
                        tmp = self._possible_heredoc() if ch == "<" else (
                            self._single_quote() if ch == "'" else self._double_quote())
                        words.add_raw_string(tmp)
                    result.append(tmp)
                    continue
                ch = self._next()
                if ch == self.escape:
                    if self.raw_escapes:
                        words.add_raw_char(ch)
                        result.append(ch)
                    ch = self._next()
                    if ch == _EOF:
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
            if stop != _EOF:
                raise ShellError(f"unexpected end of statement while looking for matching {stop}")
            return "".join(result), words.get()
        finally:
            self.raw_escapes = saved

    def _single_quote(self) -> str:
        out: list[str] = []
        ch = self._next()
        if self.raw_quotes:
            out.append(ch)
        while True:
            ch = self._next()
            if ch == _EOF:
                raise ShellError(
                    "unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _double_quote(self) -> str:
        out: list[str] = []
        ch = self._next()
        if self.raw_quotes:
            out.append(ch)
        while True:
            p = self._peek()
            if p == _EOF:
                raise ShellError(
                    "unexpected end of statement while looking for matching double-quote")
            if p == '"':
                ch = self._next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if p == "$":
                out.append(self._dollar())
                continue
            ch = self._next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                p = self._peek()
                if p == _EOF:
                    continue
                if p in ('"', "$", self.escape):
                    ch = self._next()
            out.append(ch)

    def _get(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            return self.env[name], True
        return "", False

    def _dollar(self) -> str:
        self._next()
        if self._peek() != "{":
            name = self._name()
            if not name:
                return "$"
            value, found = self._get(name)
            if not found and self.skip_unset:
                return "$" + name
            return value
        self._next()
        p = self._peek()
        if p == _EOF:
            raise ShellError("syntax error: missing '}'")
        if p in "{}:":
            raise ShellError("syntax error: bad substitution")
        name = self._name()
        ch = self._next()
        chs = ch
        null_is_unset = False
        if ch == "}":
            value, found = self._get(name)
            if not found and self.skip_unset:
                return "${" + name + "}"
            return value
        if ch == ":":
            null_is_unset = True
            ch = self._next()
            chs += ch
        if ch == ":" or ch in ("+", "-", "?", "#", "%") or null_is_unset:
            raw = ch in ("#", "%")
            if null_is_unset and raw:
                raise ShellError(f"unsupported modifier ({chs}) in substitution")
            try:
                word, _ = self._stop_on("}", raw)
            except ShellError:
                if self._peek() == _EOF:
                    raise ShellError("syntax error: missing '}'") from None
                raise
            value, found = self._get(name)
            if self.skip_unset and not found:
                return "${" + name + chs + word + "}"
            empty = not found or (null_is_unset and value == "")
            if ch == "-":
                return word if empty else value
            if ch == "+":
                return "" if empty else word
            if ch == "?":
                if not found or (null_is_unset and value == ""):
                    raise ShellError(f"{name}: {word or 'is not allowed to be unset'}")
                return value
            if ch in ("#", "%"):
                greedy = word[:1] == ch
                if greedy:
                    word = word[1:]
                if ch == "%":
                    return _trim_suffix(word, value, greedy)
                return _trim_prefix(word, value, greedy)
            raise ShellError(f"unsupported modifier ({chs}) in substitution")
        if ch == "/":
            replace_all = self._peek() == "/"
            if replace_all:
                self._next()
            try:
                pattern, _ = self._stop_on("/", True)
                replacement, _ = self._stop_on("}", True)
            except ShellError:
                if self._peek() == _EOF:
                    raise ShellError("syntax error: missing '}'") from None
                raise
            value, found = self._get(name)
            if self.skip_unset and not found:
                return "${" + name + "/" + pattern + "/" + replacement + "}"
            rx = _shell_pattern(pattern, True, False)
            return rx.sub(lambda _m: replacement, value, count=0 if replace_all else 1)
        raise ShellError(f"unsupported modifier ({chs}) in substitution")

    def _name(self) -> str:
        out: list[str] = []
        while self._peek() != _EOF:
            ch = self._peek()
            if not out and _is_digit(ch):
                while self._peek() != _EOF and _is_digit(self._peek()):
                    out.append(self._next())
                return "".join(out)
            if not out and ch in "@*#?-$!0":
                return self._next()
            if not (_is_letter(ch) or _is_digit(ch) or ch == "_"):
                break
            out.append(self._next())
        return "".join(out)

    def _possible_heredoc(self) -> str:
        self._next()
        if self._peek() != "<":
            return "<"
        self._next()
        space: list[str] = []
        while self._peek() in ("\t", "\r", " ") and self._peek() != _EOF:
            space.append(self._next())
        return "<<" + "".join(space)


def _shell_pattern(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str]:
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 0
    while i < len(pattern):
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(star)
            continue
        if tok == "?":
            out.append(".")
            continue
        if tok == "\\":
            nxt = pattern[i] if i < len(pattern) else ""
            if nxt in ("}", "/"):
                continue
            i += 1
            if nxt not in ("*", "?", "\\"):
                raise ShellError(f"invalid pattern ({pattern}) in substitution")
            out.append(re.escape(nxt))
            continue
        out.append(re.escape(tok))
    return re.compile("".join(out), re.DOTALL)


def _trim_prefix(word: str, value: str, greedy: bool) -> str:
    m = _shell_pattern(word, greedy, True).search(value)
    return value[m.end():] if m else value


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # Leftmost search on reversed strings finds the shortest/longest rightmost match.
    rev: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            rev[:0] = [pattern[i], pattern[i + 1]]
            i += 2
        else:
            rev.insert(0, pattern[i])
            i += 1
    return _trim_prefix("".join(rev), value[::-1], greedy)[::-1]


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
            if ch in _GO_SPACE:
                i += 1
                continue
            phase = 1
        if phase in (1, 2) and i == n:
            if blank_ok or buf:
                words.append("".join(buf))
            break
        if phase == 1:
            if ch in _GO_SPACE:
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
        while sep < len(rest) and rest[sep] not in _GO_SPACE:
            sep += 1
        nxt = sep
        while nxt < len(rest) and rest[nxt] in _GO_SPACE:
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
            if chr(ch) in _GO_SPACE:
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
            if chr(ch) in _GO_SPACE:
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
        ins = _replace(ins, body_start=i)
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
