"""Deprecated path of the ``execute_python_code`` tool; it moved to :mod:`reinflow.sandbox.python_tool`.

Import it as ``from reinflow import execute_python_code_tool``. This module goes in the next release.

The warning is issued before the tool is imported: importing AgentScope installs its own
``DeprecationWarning`` filter in front of the user's, which would otherwise hide this warning from
``python -W error::DeprecationWarning``.
"""

import warnings

warnings.warn(
    "reinflow.python_tool is deprecated and will be removed in the next release; "
    "use `from reinflow import execute_python_code_tool`",
    DeprecationWarning,
    stacklevel=2,
)

from reinflow.sandbox.python_tool import execute_python_code_tool  # noqa: E402  (after the warning: see above)

__all__ = ["execute_python_code_tool"]
