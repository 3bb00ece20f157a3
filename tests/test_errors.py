"""reinflow.errors.one_line: how every caught exception becomes part of a one-line message."""

from __future__ import annotations

import doctest

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from reinflow import errors
from reinflow.errors import ReinflowError, one_line


def test_module_doctests() -> None:
    result = doctest.testmod(errors)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "error, expected",
    [
        (ValueError("plain"), "plain"),
        (ValueError("first\nsecond\nthird"), "first"),
        (RuntimeError("\n\n   indented headline  \n detail"), "indented headline"),
        (OSError("windows line\r\nnext"), "windows line"),
        (TypeError("  \t spaces around \t "), "spaces around"),
        (ReinflowError("a: b: c (did you mean 'd'?)"), "a: b: c (did you mean 'd'?)"),
    ],
)
def test_first_non_blank_line_stripped(error: BaseException, expected: str) -> None:
    assert one_line(error) == expected


@pytest.mark.parametrize("error", [ValueError(), AssertionError(""), RuntimeError("\n  \n\t"), KeyboardInterrupt()])
def test_empty_message_gives_the_class_name(error: BaseException) -> None:
    assert one_line(error) == type(error).__name__


def test_the_result_never_spans_lines_whatever_the_message() -> None:
    for message in ["", "x", "\n", "a\nb", "\n\nc\n", "\r\n", "d\x0be", "f\u2028g"]:
        line = one_line(RuntimeError(message))
        assert line and line == line.strip() and len(line.splitlines()) == 1, repr(message)


def test_real_multi_line_errors_give_their_headline() -> None:
    class Options(BaseModel):
        steps: int

    with pytest.raises(ValidationError) as caught:
        Options.model_validate({"steps": "many"})
    assert one_line(caught.value) == "1 validation error for Options"
    with pytest.raises(yaml.YAMLError) as parsed:
        yaml.safe_load("a: [unclosed\n")
    assert one_line(parsed.value) == "while parsing a flow sequence"
    with pytest.raises(KeyError) as missing:
        {}["key"]
    assert one_line(missing.value) == "'key'"
