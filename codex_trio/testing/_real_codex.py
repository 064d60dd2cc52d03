"""Finding the real ``codex`` binary for tests that drive it (``pytest.mark.real_codex``).

Tests prefer the native binary inside the npm platform package that ``./dev setup`` installs into
``.codex-npm``: it is a single process, while the Node 20 wrapper adds a parent process and ~100 ms of
startup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .._errors import ProcessError
from .._paths import project_codex_bins
from .._pins import PINNED_CODEX_VERSION

__all__ = ["codex_version", "expected_codex_version", "find_codex_bin", "require_codex_bin"]

ENV_VAR = "CODEX_TRIO_CODEX_BIN"
#: Set by ``./dev compat`` to the version it runs the real suite against; unset, the pin is expected.
EXPECTED_VERSION_ENV_VAR = "CODEX_TRIO_EXPECTED_CODEX_VERSION"


def _is_executable_file(path: str | os.PathLike[str]) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _project_roots() -> list[Path]:
    # The working dir covers `./dev test`; the package's parent covers running from elsewhere on an editable
    # install. Resolved and deduplicated so the same place is not searched twice.
    roots: list[Path] = []
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        resolved = root.resolve()
        if resolved not in roots:
            roots.append(resolved)
    return roots


def _native_candidates() -> list[Path]:
    found: list[Path] = []
    for root in _project_roots():
        found.extend(project_codex_bins(root))
    return found


def find_codex_bin() -> str | None:
    """The codex binary to test against, or None.

    Looks at ``$CODEX_TRIO_CODEX_BIN``, then the project's ``.codex-npm`` native binary, then ``codex`` on
    PATH.
    """
    env_bin = os.environ.get(ENV_VAR, "")
    if env_bin and _is_executable_file(env_bin):
        return env_bin
    for candidate in _native_candidates():
        if _is_executable_file(candidate):
            return str(candidate)
    return shutil.which("codex")


def _ci_is_set() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require_codex_bin() -> str:
    """The codex binary, else skip the test (or fail it under CI, where a missing binary is a set-up bug)."""
    found = find_codex_bin()
    if found is not None:
        return found
    import pytest  # lazily: this module is importable without pytest

    env_bin = os.environ.get(ENV_VAR, "")
    why = f"{ENV_VAR}={env_bin!r} is not an executable file; " if env_bin else ""
    message = (
        f"the real codex binary was not found ({why}no .codex-npm install, no `codex` on PATH). "
        f"Install it with `./dev setup` (npm install @openai/codex@{PINNED_CODEX_VERSION} into .codex-npm) "
        f"or set {ENV_VAR} to the binary"
    )
    if _ci_is_set():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def codex_version(bin: str) -> str:
    """What ``bin --version`` prints, e.g. ``"codex-cli 0.171.0"``."""
    try:
        done = subprocess.run([bin, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProcessError(f"could not run {bin!r} --version: {exc}") from exc
    if done.returncode != 0:
        raise ProcessError(f"{bin!r} --version exited with status {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def expected_codex_version() -> str:
    """The ``X.Y.Z`` the binary under test must report: the pin, or the version ``./dev compat`` is running.

    Tests compare against this rather than a literal, so bumping :data:`codex_trio._pins.PINNED_CODEX_VERSION`
    (and ``./dev`` with it) is the whole of a codex upgrade, and ``./dev compat`` can run the same suite on
    another version.
    """
    return os.environ.get(EXPECTED_VERSION_ENV_VAR, "").strip() or PINNED_CODEX_VERSION
