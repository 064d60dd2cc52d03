"""``python -m codex_trio``: the ``codex-trio`` command."""

from codex_trio.cli import main

raise SystemExit(main())
