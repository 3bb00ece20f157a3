"""Deprecated path of the ``execute_python_code`` tool; it moved to :mod:`reinflow.sandbox.python_tool`.

Import it as ``from reinflow import execute_python_code_tool``. This module goes in the next release.
"""

import warnings

from reinflow.sandbox.python_tool import execute_python_code_tool

warnings.warn(
    "reinflow.python_tool is deprecated and will be removed in the next release; "
    "use `from reinflow import execute_python_code_tool`",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["execute_python_code_tool"]
