"""What the Dockerfile lexer produces: instructions with the physical lines they span, heredocs,
the lexed file, the error for text BuildKit would refuse, and Go's notions of space and quoting
that BuildKit's parser (written in Go) relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .dockerfile_shell import GO_SPACE


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


def go_quote(s: str) -> str:
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
