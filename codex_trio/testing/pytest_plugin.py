"""pytest fixtures of the codex_trio testing kit. Opt-in: installing codex_trio registers nothing with pytest.

Enable them in your top-level ``conftest.py``::

    pytest_plugins = ["codex_trio.testing.pytest_plugin"]

Fixtures: ``fake_app_server``, ``fake_launcher``, ``mock_model``, ``codex_bin``, ``codex_home``,
``short_socket_dir``; the ``real_codex`` marker. :func:`short_dir` is the context manager behind
``short_socket_dir``. (An entry point would put these generic names into every pytest run of any environment that
installs the package, which is why there is none.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ._fake_app_server import FakeAppServer
from ._launchers import FakeLauncher
from ._mock_model import MockModelServer, write_codex_home
from ._real_codex import require_codex_bin


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_codex: needs the real codex app-server binary (fails under CI=true when it is missing)"
    )


@contextmanager
def short_dir(tag: str = "") -> Iterator[Path]:
    """A fresh private (0700) directory short enough for Unix socket paths, removed with everything in it on exit.

    The one scheme for short directories in tests: ``/tmp/ctr-[<tag>-]XXXXXXXX`` (under ``/tmp``, since pytest's
    ``tmp_path`` and ``$TMPDIR`` are often too long for ``sun_path``). Use the :func:`short_socket_dir` fixture;
    this context manager is for a test that needs several, or one outside a fixture (a Hypothesis example, a
    state machine, a helper context manager).
    """
    root = "/tmp" if os.path.isdir("/tmp") else None
    path = Path(tempfile.mkdtemp(prefix=f"ctr-{tag}-" if tag else "ctr-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_socket_dir() -> Iterator[Path]:
    """A fresh, private directory short enough for Unix socket paths (under ``/tmp``, since pytest's ``tmp_path``
    is often too long for ``sun_path``), removed with everything in it after the test (see :func:`short_dir`)."""
    with short_dir() as path:
        yield path


@pytest.fixture
def fake_app_server() -> FakeAppServer:
    """A fresh in-process FakeAppServer."""
    return FakeAppServer()


@pytest.fixture
def fake_launcher(fake_app_server: FakeAppServer) -> FakeLauncher:
    """A launcher that runs a runtime against ``fake_app_server`` over memory streams."""
    return FakeLauncher(fake_app_server)


@pytest.fixture
def mock_model() -> Iterator[MockModelServer]:
    """A scripted Responses API on 127.0.0.1 (closed after the test)."""
    with MockModelServer() as model:
        yield model


@pytest.fixture
def codex_bin() -> str:
    """The real codex binary; skips without it, or fails when the ``CI`` environment variable is set."""
    return require_codex_bin()


@pytest.fixture
def codex_home(tmp_path: Path, mock_model: MockModelServer) -> Path:
    """A fresh CODEX_HOME whose config.toml points codex at ``mock_model`` (no login, no key)."""
    return write_codex_home(tmp_path / "codex-home", mock_model.url)
