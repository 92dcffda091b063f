"""The ``root`` marker: without root, marked tests are skipped with their reason (conftest)."""

from __future__ import annotations

import os

import conftest
import pytest


class FakeItem:
    def __init__(self, marker: pytest.MarkDecorator | None) -> None:
        self.marker = marker.mark if marker is not None else None
        self.added: list[pytest.Mark] = []

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return self.marker if self.marker is not None and self.marker.name == name else None

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.added.append(marker.mark)


def _skips(euid: int, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    items = [FakeItem(pytest.mark.root(reason="debootstrap needs root")),
             FakeItem(pytest.mark.root), FakeItem(pytest.mark.slow), FakeItem(None)]
    conftest.pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]
    return [[str(m.kwargs["reason"]) for m in i.added if m.name == "skip"] for i in items]


def test_without_root_marked_tests_are_skipped_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _skips(1000, monkeypatch) == [["not root: debootstrap needs root"],
                                         [f"not root: {conftest.ROOT_REASON}"], [], []]


def test_as_root_nothing_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _skips(0, monkeypatch) == [[], [], [], []]
