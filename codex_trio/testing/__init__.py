"""The codex_trio testing kit.

* :class:`FakeAppServer` — an in-process, scriptable app-server speaking the wire protocol of the pinned codex (over a
  Unix-socket WebSocket or memory streams); also runnable as a child process with
  ``python -m codex_trio.testing.fake_app_server --listen unix://PATH``.
* :class:`FakeLauncher` — run a whole runtime against a FakeAppServer in virtual time, with kills and drops.
* :class:`MockModelServer` — the OpenAI Responses API over SSE on 127.0.0.1, scripted, so the *real* codex binary
  runs offline; :func:`write_codex_home` points a fresh ``CODEX_HOME`` at it.
* pytest fixtures, opt-in: ``pytest_plugins = ["codex_trio.testing.pytest_plugin"]`` in your top-level
  ``conftest.py`` gives ``fake_app_server``, ``fake_launcher``, ``mock_model``, ``codex_bin``, ``codex_home`` and
  ``short_socket_dir`` (installing the package registers nothing with pytest).
"""

from ._fake_app_server import (
    FakeAppServer as FakeAppServer,
    FakeRpcError as FakeRpcError,
    ServerRequestSpec as ServerRequestSpec,
    TurnScript as TurnScript,
)
from ._launchers import FakeLauncher as FakeLauncher
from ._mock_model import (
    ExecCommand as ExecCommand,
    Fail as Fail,
    Hang as Hang,
    MockModelServer as MockModelServer,
    Text as Text,
    Usage as Usage,
    write_codex_home as write_codex_home,
)
from ._real_codex import find_codex_bin as find_codex_bin, require_codex_bin as require_codex_bin

__all__ = [
    "ExecCommand",
    "Fail",
    "FakeAppServer",
    "FakeLauncher",
    "FakeRpcError",
    "Hang",
    "MockModelServer",
    "ServerRequestSpec",
    "Text",
    "TurnScript",
    "Usage",
    "find_codex_bin",
    "require_codex_bin",
    "write_codex_home",
]
