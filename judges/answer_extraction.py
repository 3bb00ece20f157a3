r"""Pure helpers of the math answer judge: find the final answer in a response, compare it.

Extraction (:func:`extract_final_answer`) is plain string work. Comparison
(:func:`answers_match`) hands both sides to ``math_verify`` (``parse`` + ``verify``), which
compares them as numbers and expressions, not as strings: ``1,000`` = ``1000.0`` = ``$1000``
= ``1000 dollars``, ``\frac{1}{2}`` = ``0.5`` = ``1/2``, while ``72`` ≠ ``720`` and ``-5`` ≠ ``5``.

Decisions, and what math_verify does that one might not expect:

* **Percentages.** math_verify accepts both readings of ``p%``: ``50%`` = ``0.5`` *and*
  ``10%`` = ``10``. We keep both: GSM8K gives the answer to "what percentage ...?" as a bare
  ``10``, so a model answering ``10%`` is right.
* **How the text is handed over.** math_verify reads bare text with a number/expression regex
  and LaTeX only inside a math environment (``$...$``, ``\(...\)``, ``\boxed``). Bare numbers
  work as they are (``1,000``, ``$1000``, ``1000 dollars``), so they are *not* wrapped: wrapped,
  ``$1 000$`` reads as ``1*0`` and ``$18 eggs$`` as ``18*E*g*g*s``. Text with a backslash or a
  brace (``\frac{1}{2}``, ``2^{10}``, ``\$18``, ``1{,}000``) is wrapped in ``$...$``; bare,
  ``2^{10}`` reads as ``2`` and ``\$18`` or ``\sqrt{4}`` do not parse at all. The Unicode minus
  ``−3`` does not parse bare, so it is rewritten to ``-3`` first; ``1e3`` reads as ``1`` bare, so
  scientific notation is rewritten to ``1 \times 10^{3}``.
* **Threads.** math_verify's timeouts use ``signal.alarm``, which works only in the main
  thread; anywhere else ``parse``/``verify`` raise ``ValueError`` unless the timeout is ``None``.
  So the main thread gets :data:`MAIN_THREAD_TIMEOUT_SECONDS` and every other thread (worker
  threads, ``asyncio.to_thread``) runs with no timeout. A timeout alone would not be enough
  anyway (``10^{10^{10}}`` runs for ever without one), so both modes first refuse the answers that
  can make sympy run away (:func:`is_too_costly`: towers of powers, huge exponents or factorials,
  very long text); those are "uncertain". Results are the same in every thread.
* **Certainty.** ``is_certain`` is False when a side is missing from math_verify's point of view
  (it could not parse it, or it was refused as too costly), or when exactly one side came out
  with free symbols (``\text{eighteen}`` parses as the symbol ``eighteen``): an LLM judge can
  decide those later. A missing prediction is certainly wrong.
"""

from __future__ import annotations

import re
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy import Basic
from sympy.matrices import MatrixBase

MAIN_THREAD_TIMEOUT_SECONDS = 5
"""math_verify's per-call timeout in the main thread (seconds); other threads get none."""

MAX_ANSWER_CHARS = 1000
"""Answers longer than this are not handed to math_verify (uncertain)."""

_EXTRACTION_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())
_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASH_ANSWER = re.compile(r"####[ \t]*([^\n]*)")
_INTEGER = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d{1,3}(?:[ \u00a0\u202f\u2009]\d{3})+(?!\d)|\d+)"
_DECIMAL = rf"(?:{_INTEGER}(?:\.\d+)?|\.\d+)"
_NUMBER = re.compile(rf"(?:(?<![\w.])[-−])?(?<![\d.]){_DECIMAL}(?:/{_DECIMAL})?")
_CHARACTER_FIXES = str.maketrans(
    {"−": "-", "﹣": "-", "－": "-", "\u00a0": " ", "\u202f": " ", "\u2009": " "}
)
_MATH_ENVIRONMENT = re.compile(r"(?<!\\)\$.*?(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox", re.DOTALL)
_LATEX_HINT = re.compile(r"[\\{}]")
_SCIENTIFIC = re.compile(r"(-?\d+(?:\.\d+)?)[eE]\+?(-?\d+)")
_POWER = r"(?:\^|\*\*)"
_POWER_TOWER = re.compile(
    rf"{_POWER}\s*(?:[{{(][^{{}}()]*{_POWER}|(?:\{{[^{{}}]*\}}|\([^()]*\)|[\d.]+)\s*{_POWER})"
)
_EXPONENT = re.compile(rf"{_POWER}\s*[{{(]?\s*-?\s*(\d+)")
_FACTORIAL = re.compile(r"(\d+)\s*!")
_MAX_EXPONENT = 1_000_000
_MAX_FACTORIAL = 100_000


def extract_final_answer(text: str) -> str | None:
    r"""The final answer written in a response, as it is written there, or None.

    In order: the content of the last ``\boxed{...}`` / ``\fbox{...}`` (nested braces kept),
    else the rest of the line after the last ``####``, else the last number in the text
    (``-2``, ``1,000``, ``118 000``, ``3.5``, ``.5``, ``3/4``).

    >>> extract_final_answer(r"so $x = \boxed{\frac{1}{2}}$.")
    '\\frac{1}{2}'
    >>> extract_final_answer(r"first \boxed{3}, then \fbox{4}")
    '4'
    >>> extract_final_answer("9 * 2 = 18\n#### 1,234")
    '1,234'
    >>> extract_final_answer("She pays $1,000.50 for 3/4 of it.")
    '3/4'
    >>> extract_final_answer("no digits here") is None
    True
    """
    boxed = _last_boxed_content(text)
    if boxed is not None:
        return boxed
    hashed = _last_hash_answer(text)
    if hashed is not None:
        return hashed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def reference_answer(gsm8k_answer: str) -> str:
    r"""The reference answer of a GSM8K ``answer`` field: after ``####``, commas removed.

    Text without ``####`` is taken as the answer itself, stripped.

    >>> reference_answer("She makes 9 * 2 = $18.\n#### 1,800")
    '1800'
    >>> reference_answer(r"  \frac{1}{2} ")
    '\\frac{1}{2}'
    """
    if "####" in gsm8k_answer:
        return gsm8k_answer.rsplit("####", 1)[1].strip().replace(",", "")
    return gsm8k_answer.strip()


def answers_match(predicted: str | None, reference: str) -> tuple[bool, bool]:
    r"""``(is_correct, is_certain)``: is ``predicted`` mathematically equal to ``reference``?

    ``is_certain`` is False when math_verify could not read a side (then an LLM judge may be
    asked); a missing or blank prediction is certainly wrong.

    >>> answers_match("1,000", "1000"), answers_match("$1000", "1000.0")
    ((True, True), (True, True))
    >>> answers_match(r"\frac{1}{2}", "0.5"), answers_match("−3", "-3")
    ((True, True), (True, True))
    >>> answers_match("72", "720"), answers_match("-5", "5")
    ((False, True), (False, True))
    >>> answers_match("eighteen", "18"), answers_match(None, "18")
    ((False, False), (False, True))
    """
    if predicted is None or not predicted.strip():
        return False, True
    predicted_text, reference_text = _normalise(predicted), _normalise(reference)
    if predicted_text == reference_text:
        return True, True
    gold, target = parse_answer(reference_text), parse_answer(predicted_text)
    if not gold or not target:
        return False, False
    is_correct = verify(gold, target, timeout_seconds=_timeout_seconds())
    return is_correct, is_correct or _has_symbols(gold) == _has_symbols(target)


def parse_answer(answer: str) -> list[Basic | MatrixBase]:
    r"""math_verify's reading of one answer (empty when it cannot read it or it is too costly).

    >>> parse_answer("1,000 dollars"), parse_answer(r"\frac{3}{4}"), parse_answer("five")
    ([1000], [3/4], [])
    """
    text = _math_verify_input(_normalise(answer))
    if not text or is_too_costly(text):
        return []
    return parse(
        text,
        extraction_config=_EXTRACTION_CONFIG,
        fallback_mode="no_fallback",
        parsing_timeout=_timeout_seconds(),
    )


def is_too_costly(answer: str) -> bool:
    r"""Whether sympy could run away on this answer, so it is not handed to math_verify.

    True for very long text, towers of powers, exponents above a million and factorials above
    100 000: without a timeout (any non-main thread) they could block for ever.

    >>> is_too_costly("10^{10^{10}}"), is_too_costly("9**9**9"), is_too_costly("2^{10}")
    (True, True, False)
    >>> is_too_costly("10^{10000000}"), is_too_costly("10000000!"), is_too_costly("5!")
    (True, True, False)
    """
    if len(answer) > MAX_ANSWER_CHARS or _POWER_TOWER.search(answer):
        return True
    exponents = (int(value) for value in _EXPONENT.findall(answer))
    factorials = (int(value) for value in _FACTORIAL.findall(answer))
    return any(value > _MAX_EXPONENT for value in exponents) or any(
        value > _MAX_FACTORIAL for value in factorials
    )


def _last_boxed_content(text: str) -> str | None:
    """The content of the last complete, non-empty top-level box, without redundant wrapping."""
    contents = []
    position = 0
    while match := _BOX_START.search(text, position):
        closing = _matching_brace(text, match.end() - 1)
        if closing is None:
            position = match.end()
            continue
        content = text[match.end() : closing].strip()
        if content:
            contents.append(content)
        position = closing + 1
    return _unwrap(contents[-1]) if contents else None


def _matching_brace(text: str, opening: int) -> int | None:
    """Index of the brace closing the one at ``opening``; escaped braces do not count."""
    depth = 0
    index = opening
    while index < len(text):
        character = text[index]
        if character == "\\":
            index += 2
            continue
        depth += {"{": 1, "}": -1}.get(character, 0)
        if depth == 0:
            return index
        index += 1
    return None


def _unwrap(content: str) -> str:
    r"""Strip braces and boxes around the whole content: ``{5}`` and ``\boxed{5}`` give ``5``."""
    while True:
        inner = _wrapped_content(content)
        if inner is None or not inner:
            return content
        content = inner


def _wrapped_content(content: str) -> str | None:
    """The inside of ``content`` when one brace pair or one box spans all of it, else None."""
    box = _BOX_START.match(content)
    if box:
        opening = box.end() - 1
    elif content.startswith("{"):
        opening = 0
    else:
        return None
    if _matching_brace(content, opening) != len(content) - 1:
        return None
    return content[opening + 1 : -1].strip()


def _last_hash_answer(text: str) -> str | None:
    """The rest of the line after the last ``####``, when that is not blank."""
    answers = _HASH_ANSWER.findall(text)
    return answers[-1].strip() if answers and answers[-1].strip() else None


def _normalise(answer: str) -> str:
    """Unicode minus signs and spaces made plain; outer spaces and a final full stop removed."""
    return answer.translate(_CHARACTER_FIXES).strip().rstrip(".").strip()


def _math_verify_input(text: str) -> str:
    """The text as math_verify reads it best (see the module notes)."""
    if _MATH_ENVIRONMENT.search(text):
        return text
    scientific = _SCIENTIFIC.fullmatch(text)
    if scientific:
        return f"${scientific[1]} \\times 10^{{{scientific[2]}}}$"
    if _LATEX_HINT.search(text):
        return f"${text}$"
    return text


def _timeout_seconds() -> int | None:
    """math_verify's timeout: signal-based, so only possible in the main thread."""
    if threading.current_thread() is threading.main_thread():
        return MAIN_THREAD_TIMEOUT_SECONDS
    return None


def _has_symbols(expressions: list[Basic | MatrixBase]) -> bool:
    """Whether any parsed expression has free symbols (letters)."""
    return any(expression.free_symbols for expression in expressions)
