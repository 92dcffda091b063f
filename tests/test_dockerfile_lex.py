"""The lexer against BuildKit's own parser test data (tests/corpus/dockerfile, see its README).

These tests are why xshim has its own lexer: it must draw instruction boundaries exactly where
BuildKit does. Each BuildKit ``testfiles/*/result`` is the AST dump BuildKit's parser prints for
the Dockerfile beside it; :func:`dump` must print the same, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from xshim.builder.dockerfile_lex import (
    LexError,
    dump,
    heredocs_from_line,
    lex,
    parse_heredoc,
    parse_json_array,
    parse_words,
    split_lines,
)
from xshim.builder.dockerfile_shell import ShellLex

CORPUS = Path(__file__).parent / "corpus" / "dockerfile"
BUILDKIT = CORPUS / "buildkit"
HEREDOC_CASES = json.loads((CORPUS / "buildkit-heredoc" / "parser_heredoc_cases.json").read_text())


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


def all_corpus_files() -> list[Path]:
    files = sorted(CORPUS.glob("buildkit/**/Dockerfile"))
    files += sorted(CORPUS.glob("buildkit-heredoc/*.Dockerfile"))
    files += sorted(p for p in (CORPUS / "real").iterdir() if p.name != "SOURCES.txt")
    return files


@pytest.mark.parametrize("case", sorted((BUILDKIT / "testfiles").iterdir()), ids=lambda p: p.name)
def test_dump_matches_buildkit_result(case: Path) -> None:
    lexed = lex(_read(case / "Dockerfile"))
    assert dump(lexed) + "\n" == (case / "result").read_text()


@pytest.mark.parametrize(
    "case", sorted((BUILDKIT / "testfiles-negative").iterdir()), ids=lambda p: p.name
)
def test_buildkit_negative_cases_are_errors(case: Path) -> None:
    with pytest.raises(LexError):
        lex(_read(case / "Dockerfile"))


def test_line_spans_match_buildkit() -> None:
    lexed = lex(_read(BUILDKIT / "testfile-line" / "Dockerfile"))
    # BuildKit's TestParseIncludesLineNumbers: 1-based inclusive start/end lines.
    assert [(i.start + 1, i.end) for i in lexed.instructions] == [(5, 5), (11, 12), (17, 31)]


def test_heredocs_match_buildkit() -> None:
    case = HEREDOC_CASES["extracts"]
    lexed = lex(case["dockerfile"])
    got = [
        [
            {"name": h.name, "content": h.content, "expand": h.expand, "chomp": h.chomp,
             "fd": h.fd}
            for h in ins.heredocs
        ] or None
        for ins in lexed.instructions[case["skip_first"]:]
    ]
    assert got == case["expected"]


def test_json_form_never_has_heredocs() -> None:
    lexed = lex(HEREDOC_CASES["json_not_heredoc"])
    assert [i.heredocs for i in lexed.instructions[1:]] == [(), (), ()]
    assert [i.json for i in lexed.instructions[1:]] == [("whoami",), ("<<EOF",), ("<<'EOF'",)]


@pytest.mark.parametrize("word", HEREDOC_CASES["valid"])
def test_valid_heredoc_words(word: str) -> None:
    doc = parse_heredoc(word)
    assert doc is not None and doc.name == "EOF"


@pytest.mark.parametrize("word", HEREDOC_CASES["invalid"])
def test_invalid_heredoc_words(word: str) -> None:
    with pytest.raises(LexError):
        parse_heredoc(word)


@pytest.mark.parametrize("word", HEREDOC_CASES["not"])
def test_not_heredoc_words(word: str) -> None:
    assert parse_heredoc(word) is None


@pytest.mark.parametrize("case", HEREDOC_CASES["from_line"], ids=lambda c: c["line"])
def test_heredocs_from_line(case: dict[str, object]) -> None:
    names = [h.name for h in heredocs_from_line(str(case["line"]))]
    expected = case["names"]
    assert isinstance(expected, list)
    # BuildKit's own test only compares the heredocs it finds, and for "RUN <<- EOF" it finds
    # none: "<<" followed by "-" is not followed by blanks, so "<<-" and "EOF" are two words.
    if case["line"] == "RUN <<- EOF":
        expected = []
    assert names == expected


def test_parse_words_like_buildkit() -> None:
    # BuildKit's TestParseWords table.
    cases = [
        ("foo", ["foo"]),
        ("foo bar", ["foo", "bar"]),
        ("foo\\ bar", ["foo\\ bar"]),
        ("foo=bar", ["foo=bar"]),
        ("foo bar 'abc xyz'", ["foo", "bar", "'abc xyz'"]),
        ('foo bar "abc xyz"', ["foo", "bar", '"abc xyz"']),
        ("àöû", ["àöû"]),
        ('föo bàr "âbc xÿz"', ["föo", "bàr", '"âbc xÿz"']),
    ]
    for text, words in cases:
        assert parse_words(text, "\\") == words


@pytest.mark.parametrize("path", all_corpus_files(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_spans_cover_the_file_in_order(path: Path) -> None:
    """Spans are ordered and disjoint; every line outside them is blank, a comment or directive."""
    text = _read(path)
    try:
        lexed = lex(text)
    except LexError:
        assert "negative" in str(path)
        return
    assert "".join(lexed.lines) == text
    covered = 0
    for ins in lexed.instructions:
        assert covered <= ins.start < ins.end <= len(lexed.lines)
        assert ins.start <= ins.body_start <= ins.end
        for line in lexed.lines[covered:ins.start]:
            stripped = line.lstrip("\ufeff \t\r\n\v\f")
            assert stripped == "" or stripped.startswith("#"), line
        first = lexed.lines[ins.start].lstrip("\ufeff \t")
        assert first.lower().startswith(ins.keyword.lower()) or first.startswith(lexed.escape)
        covered = ins.end


def test_windows_dockerfile_uses_backtick_escape() -> None:
    lexed = lex(_read(CORPUS / "real" / "moby.Dockerfile.windows"))
    assert lexed.escape == "`"
    assert lexed.directives["escape"] == "`"
    multi = [i for i in lexed.instructions if i.end - i.start > 3 and i.cmd == "run"]
    assert multi, "the Windows Dockerfile has long backtick-continued RUNs"
    assert all("`\n" not in i.logical and "`\r\n" not in i.logical for i in multi)


@pytest.mark.parametrize(
    ("text", "cmds"),
    [
        # Directives only count at the very top: after a comment it is an ordinary comment.
        ("# hello\n# escape=`\nFROM a\nRUN x `\ny\n", ["from", "run", "y"]),
        ("# escape=`\nFROM a\nRUN x `\ny\n", ["from", "run"]),
        ("FROM a\n# escape=`\nRUN x `\ny\n", ["from", "run", "y"]),
        # Comment and empty lines inside a continuation are dropped, not ends.
        ("FROM a\nRUN x \\\n# c\n\n  y\nRUN z", ["from", "run", "run"]),
        # CRLF line endings continue the same way.
        ("FROM a\r\nRUN x \\\r\n  y\r\nRUN z\r\n", ["from", "run", "run"]),
        # An escaped escape character at the end is not a continuation.
        ("FROM a\nRUN x \\\\\nRUN y\n", ["from", "run", "run"]),
        # Several heredocs on one RUN, and a fd-prefixed one.
        ("FROM a\nRUN cat <<A 3<<B\na\nA\nb\nB\nRUN z\n", ["from", "run", "run"]),
        # Heredocs only on RUN/COPY/ADD (and behind ONBUILD).
        ("FROM a\nUSER <<X\nX\n", ["from", "user", "x"]),
        ("FROM a\nONBUILD RUN <<X\nhi\nX\nRUN y\n", ["from", "onbuild", "run"]),
    ],
)
def test_instruction_boundaries(text: str, cmds: list[str]) -> None:
    assert [i.cmd for i in lex(text).instructions] == cmds


def test_continuation_logical_line_and_flags() -> None:
    ins = lex("FROM a\nRUN --mount=type=cache,target=/x \\\n  --network=none \\\n  echo hi\n"
              ).instructions[1]
    assert ins.flags == ("--mount=type=cache,target=/x", "--network=none")
    assert ins.flags_raw == "--mount=type=cache,target=/x   --network=none"
    assert ins.args == "echo hi"
    assert ins.json is None


def test_invalid_json_falls_back_to_shell_form() -> None:
    assert parse_json_array('["a", "b"]') == ("a", "b")
    assert parse_json_array("['a']") is None
    assert parse_json_array('["a"') is None
    assert parse_json_array('["a"] x') is None
    assert parse_json_array("[NaN]") is None  # not JSON to Go either
    with pytest.raises(LexError):
        parse_json_array('["a", 1]')


def test_unterminated_heredoc_is_an_error_with_its_line() -> None:
    with pytest.raises(LexError) as e:
        lex("FROM a\n\nRUN <<EOF\necho\n")
    assert e.value.line == 3


def test_bom_and_missing_final_newline_survive() -> None:
    text = "\ufeffFROM a\nRUN b"
    lexed = lex(text)
    assert [i.cmd for i in lexed.instructions] == ["from", "run"]
    assert "".join(split_lines(text)) == text


def test_shell_lex_expands_like_buildkit() -> None:
    env = {"A": "x", "E": ""}
    assert ShellLex(env=env).process_word("${A}-$A-${B:-d}-${E:-e}-${E-f}-${A:+y}") == "x-x-d-e--y"
    assert ShellLex(env={"V": "a/b/c"}).process_word("${V%/*} ${V##*/}") == "a/b c"
    assert ShellLex(skip_unset=True).process_word("$X ${Y}") == "$X ${Y}"
    assert ShellLex().process_words("a 'b c' \"d $Q\"") == ["a", "b c", "d "]
