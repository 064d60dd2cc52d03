"""pytest fixtures of the codex_trio testing kit (registered through the ``pytest11`` entry point)."""
