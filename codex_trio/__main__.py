"""``python -m codex_trio``: the ``codex-trio`` command."""

from codex_trio._entry import main

raise SystemExit(main())
