"""The testing kit's pytest fixtures are opt-in: a project that wants them names the plugin in its top-level
``conftest.py``, as this one does for the examples."""

pytest_plugins = ["codex_trio.testing.pytest_plugin"]
