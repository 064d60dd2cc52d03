"""Where the app-server's socket lives, and finding the codex binary.

The socket directory is owner-only (0700) because anyone who can connect to the socket can drive codex,
which runs commands as this user. Socket names are fresh per start so a stale link from a killed child never
collides with a new one.

Two byte limits matter for a Unix socket path (counted in the file system encoding): the kernel's
``sun_path`` holds 107 bytes plus a NUL, and the original runtime kept paths under a safer 103 bytes. codex
0.169 itself accepts longer paths (it binds elsewhere and makes the requested path a symlink), but a client
can only ``connect()`` to a long path through that symlink's target, so paths we allocate stay within the
safe budget.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ._errors import BinaryNotFound, SocketPathError

__all__ = [
    "SOCKET_PATH_BUDGET",
    "SUN_PATH_MAX",
    "allocate_socket_path",
    "default_socket_dir",
    "ensure_owner_only_dir",
    "path_bytes",
    "resolve_codex_bin",
    "sanitize_id",
]

#: Longest path ``connect()``/``bind()`` accept: ``sizeof(sun_path)`` (108 on Linux) minus the NUL.
SUN_PATH_MAX = 107
#: The budget for paths we allocate: the original runtime's safe figure (fits BSD's 104-byte sun_path too).
SOCKET_PATH_BUDGET = 103
#: Longest runtime-id prefix in a socket name, so a long id does not eat the whole budget.
_MAX_ID_IN_NAME = 32
_ENV_BIN = "CODEX_TRIO_CODEX_BIN"
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def path_bytes(path: str | os.PathLike[str]) -> int:
    """Length of ``path`` in bytes as the kernel sees it."""
    return len(os.fsencode(path))


def sanitize_id(runtime_id: str) -> str:
    """``runtime_id`` made safe as one file-name component: characters outside ``[A-Za-z0-9._-]`` -> ``_``."""
    cleaned = _UNSAFE_CHARS.sub("_", runtime_id)
    # "." and ".." would name directories, not files.
    return cleaned if cleaned.strip(".") else (cleaned.replace(".", "_") or "_")


def ensure_owner_only_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make sure only the current user can use it.

    Refuses a symlink (someone could point it anywhere) and a directory owned by another user (they could swap
    the socket under us); tightens group/other permission bits to 0700.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a dangling symlink or a non-directory: the lstat below says which
    except OSError as exc:
        raise SocketPathError(f"cannot create codex_trio runtime directory {path}: {exc.strerror or exc}") from exc
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise SocketPathError(f"cannot inspect codex_trio runtime directory {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise SocketPathError(
            f"refusing to use codex_trio runtime directory {path}: it is a symlink, not a real directory",
            value=str(path),
        )
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPathError(
            f"refusing to use codex_trio runtime directory {path}: it exists and is not a directory",
            value=str(path),
        )
    me = os.geteuid()
    if st.st_uid != me:
        raise SocketPathError(
            f"refusing to use codex_trio runtime directory {path}: it is owned by uid {st.st_uid}, "
            f"not the current user (uid {me})",
            value=str(path),
        )
    if st.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            raise SocketPathError(
                f"cannot restrict codex_trio runtime directory {path} to mode 0700: {exc.strerror or exc}"
            ) from exc
    return path


def allocate_socket_path(socket_dir: Path, runtime_id: str) -> Path:
    """A fresh random socket path ``<socket_dir>/<sanitized id>-<8 random chars>.sock`` within the budget.

    Raises :class:`SocketPathError` when the fresh name does not fit; the fix is a shorter ``socket_dir``.
    """
    stem = sanitize_id(runtime_id)[:_MAX_ID_IN_NAME]
    # 6 random bytes -> 8 url-safe characters: 48 bits is plenty to never collide with a stale link.
    path = socket_dir / f"{stem}-{secrets.token_urlsafe(6)}.sock"
    length = path_bytes(path)
    if length > SOCKET_PATH_BUDGET:
        raise SocketPathError(
            f"codex socket path for runtime {runtime_id!r} is too long for Unix sockets "
            f"({length} bytes > {SOCKET_PATH_BUDGET} safe bytes): {path}; configure a shorter socket_dir "
            f"(for example under /tmp or $XDG_RUNTIME_DIR)",
            field="socket_dir",
            value=str(socket_dir),
        )
    return path


def default_socket_dir() -> Path:
    """``$XDG_RUNTIME_DIR/codex-trio`` when that is set and usable, else ``<tmp>/codex-trio-<uid>``.

    Nothing is created here; :func:`ensure_owner_only_dir` does that when a child starts.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return Path(xdg) / "codex-trio"
    return Path(tempfile.gettempdir()) / f"codex-trio-{os.geteuid()}"


def _why_not_runnable(candidate: str) -> str | None:
    """None when ``candidate`` is an executable regular file, else a short reason."""
    if not os.path.lexists(candidate):
        return "no such file"
    if not os.path.exists(candidate):
        return "dangling symlink"
    if not os.path.isfile(candidate):
        return "not a regular file"
    if not os.access(candidate, os.X_OK):
        return "not executable"
    return None


def _check(label: str, value: str, search_path: str) -> tuple[str | None, str]:
    """Resolve one candidate: (absolute path or None, what was tried and why it failed)."""
    if os.sep not in value:
        # A bare name is looked up on PATH, as a shell would.
        found = shutil.which(value, path=search_path)
        if found is None:
            return None, f"{label} {value!r} on PATH ({search_path or '<empty>'}): not found"
        value = found
    reason = _why_not_runnable(value)
    if reason is not None:
        return None, f"{label} {value!r}: {reason}"
    # Absolute, because the child's cwd differs from ours and a relative argv[0] would be resolved against it.
    return os.path.abspath(value), ""


def resolve_codex_bin(configured: str | None, env: Mapping[str, str] = os.environ) -> str:
    """The codex binary to run, as an absolute path.

    Precedence: ``configured``, else ``$CODEX_TRIO_CODEX_BIN``, else ``codex`` on ``PATH``. The first one
    that is *set* is the only one used: an explicit choice that does not work is an error, never a silent
    fallback to some other codex of a possibly different version. Raises :class:`BinaryNotFound` listing
    what was tried and why.
    """
    search_path = env.get("PATH", os.defpath)
    tried: list[str] = []
    if configured is not None and configured.strip():
        found, why = _check("configured codex_bin", configured.strip(), search_path)
        if found is not None:
            return found
        raise BinaryNotFound([why])
    tried.append("codex_bin: not configured")
    from_env = env.get(_ENV_BIN, "").strip()
    if from_env:
        found, why = _check(f"${_ENV_BIN}", from_env, search_path)
        if found is not None:
            return found
        raise BinaryNotFound([*tried, why])
    tried.append(f"${_ENV_BIN}: not set")
    found, why = _check("default", "codex", search_path)
    if found is not None:
        return found
    raise BinaryNotFound([*tried, why])
