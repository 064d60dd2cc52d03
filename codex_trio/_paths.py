"""Where the app-server's socket lives, and finding the codex binary.

The socket directory is owner-only (0700) because anyone who can connect to the socket can drive codex,
which runs commands as this user. Socket names are fresh per start so a stale link from a killed child never
collides with a new one.

The rule for the directories we keep things in (sockets, logs, spill files) is never to change a directory that
is not ours. :func:`ensure_owner_only_dir` creates a missing directory with mode 0700; uses an existing private
one of ours as it is; and in a shared directory (world- or group-writable, or sticky) of ours or of root, like
``/tmp``, makes and uses a private subdirectory ``codex-trio-<euid>`` instead. It refuses the rest rather than
chmod-ing it: a symlink, something that is not a directory, a directory of another user (who could replace
anything we put there), and a directory of ours that others can read or enter (it says which mode it found and
how to fix it). So the directory actually used may be a subdirectory of the one configured: callers use the path
it returns.

Two byte limits matter for a Unix socket path (counted in the file system encoding): the kernel's
``sun_path`` holds 107 bytes plus a NUL, and the original runtime kept paths under a safer 103 bytes. codex
0.169 itself accepts longer paths (it binds elsewhere and makes the requested path a symlink), but a client
can only ``connect()`` to a long path through that symlink's target, so paths we allocate stay within the
safe budget.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from ._errors import BINARY_HINT, BinaryNotFound, SocketPathError

__all__ = [
    "PROJECT_CODEX_GLOBS",
    "SOCKET_PATH_BUDGET",
    "SUN_PATH_MAX",
    "allocate_socket_path",
    "default_socket_dir",
    "ensure_owner_only_dir",
    "path_bytes",
    "plan_owner_only_dir",
    "private_dir_name",
    "project_codex_bins",
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


#: Mode bits that make a directory shared: other users may create (and, without the sticky bit, rename or delete)
#: entries in it, or it is a sticky directory meant for several users.
_SHARED_BITS = stat.S_IWGRP | stat.S_IWOTH | stat.S_ISVTX
_DIR = "codex_trio runtime directory"


def private_dir_name() -> str:
    """``codex-trio-<euid>``: the name of our private subdirectory in a shared directory (and of the default
    socket directory under the temp directory)."""
    return f"codex-trio-{os.geteuid()}"


def ensure_owner_only_dir(path: Path) -> Path:
    """Make sure there is a directory only the current user can use at or in ``path``, and return it.

    * missing: created with mode 0700 (and so is every missing parent): returns ``path``;
    * an existing private directory of ours: used as it is: returns ``path``;
    * an existing shared directory (world- or group-writable, or sticky) owned by us or by root, like ``/tmp``:
      left alone; returns its private subdirectory ``codex-trio-<euid>``, created 0700, or reused when it is a
      real directory owned by us (its mode is tightened to 0700 if need be: it is ours by name and owner);
    * ``codex-trio-<euid>`` itself, owned by us: used, its mode tightened to 0700 like above.

    Raises :class:`SocketPathError` for a symlink (someone could point it anywhere), something that is not a
    directory, any directory owned by another user than root (its owner can rename and replace whatever we put
    in it, shared or not), a foreign or symlinked ``codex-trio-<euid>``, and a directory of ours that others may
    read or enter without being shared (say 0755): rather than change the mode of a directory we did not
    create, the error says what to run. The returned directory may be longer than ``path``: allocate socket
    paths in it.
    """
    return _owner_only_dir(path, create=True)[0]


def plan_owner_only_dir(path: Path) -> tuple[Path, str]:
    """What :func:`ensure_owner_only_dir` would do for ``path``, without creating or changing anything.

    Returns the directory it would return and one line saying why; raises the same :class:`SocketPathError` for
    what it would refuse. Whether the directory can actually be created is not checked.
    """
    return _owner_only_dir(path, create=False)


def _owner_only_dir(path: Path, *, create: bool) -> tuple[Path, str]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return path, f"{path} will be created with mode 0700"
        if _make_dirs(path):
            _make_private(path)
            return path, f"{path} was created with mode 0700"
        st = _lstat(path)  # created by someone else meanwhile: judged like any existing directory
    except OSError as exc:
        raise SocketPathError(f"cannot inspect {_DIR} {path}: {exc.strerror or exc}", value=str(path)) from exc
    _check_is_directory(path, st, f"refusing to use {_DIR} {path}")
    me = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == me and path.name == private_dir_name():
        if mode != 0o700:
            if create:
                _make_private(path)
            return path, f"{path} is ours by name and owner; its mode {mode:04o} is tightened to 0700"
        return path, f"{path} is private to the current user"
    if st.st_uid not in (me, 0):
        raise SocketPathError(
            f"refusing to use {_DIR} {path}: it is owned by uid {st.st_uid}, not the current user (uid {me}); "
            f"its owner could replace anything codex_trio puts there; configure a directory of your own",
            value=str(path),
        )
    if mode & _SHARED_BITS:
        return _private_subdir(path, mode, create=create)
    if st.st_uid != me:
        raise SocketPathError(
            f"refusing to use {_DIR} {path}: it is owned by uid {st.st_uid}, not the current user (uid {me}), "
            f"and it is not a shared directory (mode {mode:04o}), so nothing of ours goes in it; configure a "
            f"directory of your own",
            value=str(path),
        )
    if mode & 0o077:
        raise SocketPathError(
            f"refusing to use {_DIR} {path}: its mode is {mode:04o}, so other users can list or enter it, and "
            f"codex_trio does not change the mode of a directory it did not create; run `chmod 700 {path}`, or "
            f"configure a directory that does not exist yet (it is then created with mode 0700)",
            value=str(path),
        )
    return path, f"{path} is private to the current user"


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise SocketPathError(f"cannot inspect {_DIR} {path}: {exc.strerror or exc}", value=str(path)) from exc


def _check_is_directory(path: Path, st: os.stat_result, refusing: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise SocketPathError(f"{refusing}: it is a symlink, not a real directory", value=str(path))
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPathError(f"{refusing}: it exists and is not a directory", value=str(path))


def _make_dirs(path: Path) -> bool:
    """Create ``path`` and its missing parents, each with mode 0700 (a directory we create is private).

    Returns False when ``path`` appeared meanwhile, created by someone else. A dangling symlink counts as
    existing: nothing is created behind it.
    """
    missing: list[Path] = []
    cursor = path
    while not os.path.lexists(cursor) and cursor.parent != cursor:
        missing.append(cursor)
        cursor = cursor.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if directory == path:
                return False
        except OSError as exc:
            raise SocketPathError(f"cannot create {_DIR} {directory}: {exc.strerror or exc}", value=str(path)) from exc
    return True


def _make_private(path: Path) -> None:
    """Set mode 0700 on ``path``, a directory that is ours (we created it, or it is ours by name and owner).

    Done through a descriptor opened without following symlinks, and only after checking the owner of what was
    opened, so a swap of ``path`` after the checks cannot redirect the chmod.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SocketPathError(
                f"refusing to use {_DIR} {path}: it is a symlink or not a directory", value=str(path)
            ) from exc
        raise SocketPathError(f"cannot open {_DIR} {path}: {exc.strerror or exc}", value=str(path)) from exc
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid != me:
            raise SocketPathError(
                f"refusing to use {_DIR} {path}: it is owned by uid {st.st_uid}, not the current user (uid {me})",
                value=str(path),
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    except OSError as exc:
        raise SocketPathError(
            f"cannot restrict {_DIR} {path} to mode 0700: {exc.strerror or exc}", value=str(path)
        ) from exc
    finally:
        os.close(fd)


def _private_subdir(parent: Path, parent_mode: int, *, create: bool) -> tuple[Path, str]:
    """Our private subdirectory in the shared directory ``parent`` (which is not touched)."""
    sub = parent / private_dir_name()
    shared = f"{parent} is shared (mode {parent_mode:04o})"
    refusing = f"refusing to use {sub}, the private directory of this user in the shared directory {parent}"
    created = False
    if create:
        try:
            os.mkdir(sub, 0o700)
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise SocketPathError(
                f"{shared} and codex_trio cannot create its private subdirectory {sub} there: "
                f"{exc.strerror or exc}; configure a directory of your own",
                value=str(parent),
            ) from exc
    else:
        try:
            os.lstat(sub)
        except FileNotFoundError:
            return sub, f"{shared}: its private subdirectory {sub} will be created with mode 0700"
    st = _lstat(sub)
    _check_is_directory(sub, st, refusing)
    me = os.geteuid()
    if st.st_uid != me:
        raise SocketPathError(
            f"{refusing}: it is owned by uid {st.st_uid}, not the current user (uid {me}); someone else created "
            f"it, possibly to get at what codex_trio keeps there; remove it or configure another directory",
            value=str(sub),
        )
    mode = stat.S_IMODE(st.st_mode)
    if create:
        _make_private(sub)
    if created:
        return sub, f"{shared}: its private subdirectory {sub} was created with mode 0700"
    tightened = f" (its mode {mode:04o} is tightened to 0700)" if mode != 0o700 else ""
    return sub, f"{shared}: its private subdirectory {sub} is used{tightened}"


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


#: Where ``npm install @openai/codex`` (``./dev setup``) puts the native binary under ``.codex-npm``: the
#: platform package may sit at the top level or be nested. The same globs as ``./dev``'s ``codex_bin()``.
PROJECT_CODEX_GLOBS: Final = (
    "node_modules/@openai/codex-*/vendor/*/bin/codex",
    "node_modules/@openai/codex/node_modules/@openai/codex-*/vendor/*/bin/codex",
)


def project_codex_bins(start: Path) -> list[Path]:
    """The codex binaries ``./dev setup`` installed into ``.codex-npm`` of ``start`` or its nearest parent that has
    one (the native binary: one process, no Node wrapper), executable or not; empty when there is none."""
    for directory in (start, *start.parents):
        npm_dir = directory / ".codex-npm"
        if npm_dir.is_dir():
            return [path for pattern in PROJECT_CODEX_GLOBS for path in sorted(npm_dir.glob(pattern))]
    return []


def resolve_codex_bin(
    configured: str | None,
    env: Mapping[str, str] = os.environ,
    *,
    project_dir: Path | None = None,
    configured_as: str = "configured codex_bin",
    hint: str = BINARY_HINT,
) -> str:
    """The codex binary to run, as an absolute path.

    Precedence: ``configured``, else ``$CODEX_TRIO_CODEX_BIN``, else (with ``project_dir``, as the CLI does) the
    ``.codex-npm`` install of that directory or a parent, else ``codex`` on ``PATH``. The first one that is *set*
    is the only one used: an explicit choice that does not work is an error, never a silent fallback to some
    other codex of a possibly different version. Raises :class:`BinaryNotFound` listing what was tried and why,
    then ``hint`` (``configured_as`` names the explicit choice in that list, e.g. ``--codex-bin``).
    """
    search_path = env.get("PATH", os.defpath)
    tried: list[str] = []
    if configured is not None and configured.strip():
        found, why = _check(configured_as, configured.strip(), search_path)
        if found is not None:
            return found
        raise BinaryNotFound([why], hint=hint)
    tried.append(f"{configured_as}: not given")
    from_env = env.get(_ENV_BIN, "").strip()
    if from_env:
        found, why = _check(f"${_ENV_BIN}", from_env, search_path)
        if found is not None:
            return found
        raise BinaryNotFound([*tried, why], hint=hint)
    tried.append(f"${_ENV_BIN}: not set")
    if project_dir is not None:
        candidates = project_codex_bins(project_dir)
        for candidate in candidates:
            if _why_not_runnable(str(candidate)) is None:
                return str(candidate.absolute())
        where = f"{candidates[0]}: {_why_not_runnable(str(candidates[0]))}" if candidates else "none found"
        tried.append(f".codex-npm in {project_dir} or a parent: {where}")
    found, why = _check("default", "codex", search_path)
    if found is not None:
        return found
    raise BinaryNotFound([*tried, why], hint=hint)
