"""Shell-style word splitting and variable expansion with BuildKit's rules (its ``shell.Lex``).

The Dockerfile lexer needs it to find heredoc words the way BuildKit does, and the rewriter to
expand ``ARG`` values in FROM lines. Errors are ``ShellError``.
"""

from __future__ import annotations

import re
import unicodedata

DEFAULT_ESCAPE = "\\"

# Go's unicode.IsSpace; Python's str.isspace() also counts \x1c-\x1f, which Go does not.
GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)

_EOF = ""


MAX_NESTING = 64  # ${A:-${B:-...}} levels


class ShellError(ValueError):
    pass


class _Words:
    def __init__(self) -> None:
        self.buf = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch in GO_SPACE:
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
        self._depth = 0

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
        # Each nested ${...} costs a few Python frames; bound it well below the interpreter's
        # recursion limit so that absurd nesting is bad input, not a crash.
        if self._depth >= MAX_NESTING:
            raise ShellError(f"substitutions nested more than {MAX_NESTING} deep")
        self._depth += 1
        try:
            return self._substitution()
        finally:
            self._depth -= 1

    def _substitution(self) -> str:
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
