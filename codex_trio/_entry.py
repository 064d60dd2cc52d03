"""The ``codex-trio`` entry point (also ``python -m codex_trio``).

``--version`` is answered here, before the commands are imported: they pull in trio and the whole runtime (~0.5 s
on a small machine), which a version check has no use for. Everything else is :func:`codex_trio.cli.main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``codex-trio`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        from . import __version__

        print(f"codex-trio {__version__}")  # what argparse's version action prints, as cli.main would
        return 0
    from .cli import main as run

    return run(args)
