"""Plain-text rule regexes (`failed$`, `^push`, `^ping$`, `order`) are matched with str's methods
instead of a call into RE2; they must answer exactly as RE2 does, for any value."""

from __future__ import annotations

import re2
from hypothesis import given
from hypothesis import strategies as st

from router.pipeline.regex import Literal, compile_regex

TEXT = st.text(alphabet=st.sampled_from(list("abcé \n$^.")), max_size=12)
PATTERNS = ["failed$", "^push", "^ping$", "order", "é$", "a b", "^a.b$", "a|b", "fa+iled", "\\$", "^$", "$", "^"]


def test_plain_patterns_take_the_literal_path_and_the_rest_stay_re2() -> None:
    assert isinstance(compile_regex("failed$"), Literal)
    assert isinstance(compile_regex("^ping$"), Literal)
    for pattern in ("^a.b$", "a|b", "fa+iled", "\\$", "^$", "(?i)push"):
        assert not isinstance(compile_regex(pattern), Literal), pattern


@given(value=TEXT, suffix=TEXT)
def test_every_pattern_answers_as_re2_does(value: str, suffix: str) -> None:
    for pattern in PATTERNS:
        ours = compile_regex(pattern).search(value + suffix) is not None
        theirs = re2.compile(pattern).search(value + suffix) is not None
        assert ours == theirs, (pattern, value + suffix)


def test_an_end_anchor_is_the_end_of_the_text_not_before_a_final_newline() -> None:
    assert compile_regex("failed$").search("version_failed") is not None
    assert compile_regex("failed$").search("version_failed\n") is None  # as RE2 (Python's re would match)
