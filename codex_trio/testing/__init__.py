"""The codex_trio testing kit: a scriptable fake app-server, a mock Responses API model, pytest fixtures."""
