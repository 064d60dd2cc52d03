"""The ``@openai/codex`` version this release is built and tested against: the one source of truth.

It lives in the package (not only in ``./dev``) because the installed package needs it at run time without the
repository: install hints in errors, the demo, the test helpers. ``./dev`` reads the same line with ``sed``
(no Python needed before the venv exists), so bumping codex is a one-line change here. The oldest version the
runtime supports is :data:`codex_trio._doctor.MIN_CODEX_VERSION` (see ``docs/compatibility.md``).
"""

from __future__ import annotations

from typing import Final

__all__ = ["PINNED_CODEX_VERSION"]

#: Read by ``./dev`` (``sed``): keep it a single line of the form ``PINNED_CODEX_VERSION: Final = "X.Y.Z"``.
PINNED_CODEX_VERSION: Final = "0.171.0"
