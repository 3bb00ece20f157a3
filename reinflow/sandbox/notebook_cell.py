"""Show the value of a final bare expression, like a notebook cell.

The most common failure of small models with a Python tool is code that computes the answer and
never prints it. :func:`echo_last_expression` rewrites ``x = 6 * 7\\nx`` so that running it also
prints ``42``. The rewrite happens in the trainer (parsing only: ``ast.parse`` runs nothing); the
code itself only ever runs in the sandbox.
"""

from __future__ import annotations

import ast

MAX_PARSED_CHARS = 100_000
"""Longer code is passed through unchanged (not worth parsing in the trainer)."""

VALUE_NAME = "_reinflow_cell_value"


def echo_last_expression(code: str) -> str:
    """Return ``code`` with its final bare expression printed (unless it is None or a print call).

    >>> print(echo_last_expression("x = 6 * 7\\nx"))
    x = 6 * 7
    _reinflow_cell_value = (x)
    if _reinflow_cell_value is not None: print(repr(_reinflow_cell_value))
    >>> echo_last_expression("print(42)")
    'print(42)'
    >>> echo_last_expression("def broken(:")
    'def broken(:'
    """
    tree = _parse(code)
    if tree is None or not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body[-1]
    if _is_print_call(last.value):
        return code
    start = _offset(code, last.lineno, last.col_offset)
    expression = ast.get_source_segment(code, last.value)
    if expression is None:
        return code
    return (
        f"{code[:start]}{VALUE_NAME} = ({expression})\n"
        f"if {VALUE_NAME} is not None: print(repr({VALUE_NAME}))"
    )


def _parse(code: str) -> ast.Module | None:
    if len(code) > MAX_PARSED_CHARS:
        return None
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # the sandbox runs it as it is and reports the error to the agent


def _is_print_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"


def _offset(code: str, lineno: int, col_offset: int) -> int:
    """Character offset of (1-based line, UTF-8 byte column) in ``code``."""
    lines = code.splitlines(keepends=True)
    before = sum(len(line) for line in lines[: lineno - 1])
    line_bytes = lines[lineno - 1].encode("utf-8")[:col_offset]
    return before + len(line_bytes.decode("utf-8", errors="ignore"))
