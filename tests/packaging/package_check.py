"""The packaging check: the package builds without a warning and works as installed, on its floors and newest.

    python tests/packaging/package_check.py [--sets floors,newest] [--python PYTHON] [--keep]

(``./dev package-check``, which CI runs.) Steps, each failing the check with what it printed:

1. ``python -m build``: an sdist, and a wheel built from that sdist, with setuptools as ``build-system`` asks;
   a line of the build output that mentions a warning or a deprecation fails the check. The wheel's metadata
   must carry the SPDX license and the LICENSE file, and no pytest entry point (the plugin is opt-in).
2. For each dependency set, a fresh virtualenv (``--python``, default: this interpreter) with only the wheel:
   ``floors`` pins every dependency of pyproject.toml to its declared floor exactly (``trio>=0.25`` becomes
   ``trio==0.25``), so the floors are proven installable together; ``newest`` lets pip take the newest releases
   the declared ranges allow.
3. In that virtualenv, from a directory outside the project: ``import codex_trio``, ``codex-trio --version``,
   ``codex-trio doctor --offline`` (with the codex binary of ``$CODEX_TRIO_CODEX_BIN`` or ``PATH``; without one the
   report must still come out, and under ``CI=true`` a missing binary fails), the offline smoke app
   (smoke_app.py: a turn in process and a turn over a Unix-socket WebSocket to a child process), and
   ``mypy --strict`` on that app against the installed package (this interpreter's mypy, pointed at the
   virtualenv with ``--python-executable``).

Only the standard library, so any Python 3.11+ with ``build``, ``mypy`` and pip >= 22.3 (``pip --python``)
installed runs it (the dev extra has them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE_APP = Path(__file__).with_name("smoke_app.py")
#: A build line that fails the check: setuptools, pip and build say "warning"/"deprecated" for what will break.
WARNING = re.compile(r"warn|deprecat", re.IGNORECASE)
#: pip's own notes about this machine's index configuration are not about our package.
PIP_NOISE = re.compile(r"^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$")


class CheckFailed(Exception):
    pass


def run(argv: Sequence[str | Path], *, cwd: Path, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> str:
    """Run ``argv``; its output (stdout and stderr together), or CheckFailed with that output."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    shown = " ".join(str(a) for a in argv)
    print(f"  [{time.monotonic() - started:5.1f} s] {shown}", flush=True)
    if proc.returncode not in ok:
        raise CheckFailed(f"`{shown}` exited with {proc.returncode}:\n{proc.stdout}")
    return proc.stdout


def dependencies() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def floor_pins(requirements: list[str]) -> list[str]:
    """``name==floor`` for each requirement; every dependency must declare a ``>=`` floor."""
    pins = []
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)\s*(.*)", requirement.split(";")[0].strip())
        floors = [s.strip()[2:] for s in (match.group(2).split(",") if match else []) if s.strip().startswith(">=")]
        if match is None or len(floors) != 1:
            raise CheckFailed(f"dependency {requirement!r} declares no single `>=` floor")
        pins.append(f"{match.group(1)}=={floors[0].strip()}")
    return pins


def build(outdir: Path) -> Path:
    print("build: sdist, then a wheel from the sdist", flush=True)
    # With PYTHONDONTWRITEBYTECODE set, setuptools says "warning: byte-compiling is disabled": about the
    # environment, not the package, so the build runs without it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    output = run([sys.executable, "-m", "build", "--outdir", outdir, ROOT], cwd=ROOT, env=env)
    warnings = [line for line in output.splitlines() if WARNING.search(line) and not PIP_NOISE.match(line.strip())]
    if warnings:
        raise CheckFailed("the build printed warnings:\n" + "\n".join(warnings))
    (wheel,) = outdir.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(metadata_name).decode()
        entry_points = next((zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
    problems = []
    if "License-Expression: MIT" not in metadata.splitlines():
        problems.append("no `License-Expression: MIT` in METADATA")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("no LICENSE in the wheel's .dist-info/licenses/")
    if "pytest11" in entry_points:
        problems.append("a pytest11 entry point: the plugin must stay opt-in")
    if "codex_trio/py.typed" not in names:
        problems.append("no py.typed marker")
    if problems:
        raise CheckFailed(f"{wheel.name}: " + "; ".join(problems))
    print(f"  built {wheel.name} (no warnings; SPDX license, LICENSE, py.typed, no pytest11 entry point)")
    return wheel


def codex_binary() -> str | None:
    found = os.environ.get("CODEX_TRIO_CODEX_BIN") or shutil.which("codex")
    return os.path.abspath(found) if found else None  # the commands run elsewhere


def check_set(name: str, wheel: Path, python: str, work: Path) -> str:
    print(f"{name}: a fresh virtualenv ({python})", flush=True)
    venv = work / f"venv-{name}"
    # No pip inside (seeding one takes a while on a busy machine): this interpreter's pip installs into it.
    run([python, "-m", "venv", "--without-pip", venv], cwd=work)
    vpy = venv / "bin" / "python"
    pins = floor_pins(dependencies()) if name == "floors" else []
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", vpy, "--disable-pip-version-check"]
    run([*pip, "install", "--quiet", wheel, *pins], cwd=work)
    installed = json.loads(run([*pip, "list", "--format", "json"], cwd=work))
    versions = {p["name"].lower(): p["version"] for p in installed}
    wanted = ["trio", "trio-websocket", "wsproto", "h11", "attrs", "cattrs"]
    summary = ", ".join(f"{n} {versions.get(n, '?')}" for n in wanted)
    print(f"  installed: {summary}")

    app_dir = work / f"app-{name}"  # outside the project, so nothing but the installed package is importable
    app_dir.mkdir()
    where = run([vpy, "-c", "import codex_trio; print(codex_trio.__file__)"], cwd=app_dir).strip()
    if not where.startswith(str(venv)):
        raise CheckFailed(f"codex_trio was imported from {where}, not from the virtualenv")
    version = run([venv / "bin" / "codex-trio", "--version"], cwd=app_dir).strip()
    print(f"  {version}")

    env = {k: v for k, v in os.environ.items() if k != "CODEX_TRIO_CODEX_BIN"}
    doctor: list[str | Path] = [venv / "bin" / "codex-trio", "doctor", "--offline", "--json"]
    binary = codex_binary()
    if binary is not None:
        report = json.loads(run([*doctor, "--codex-bin", binary], cwd=app_dir, env=env))
        print(f"  doctor --offline: ok ({report['codex_version']})")
    elif os.environ.get("CI"):
        raise CheckFailed("no codex binary ($CODEX_TRIO_CODEX_BIN or codex on PATH) for `codex-trio doctor` (CI=true)")
    else:
        report = json.loads(run(doctor, cwd=app_dir, env=env, ok=(0, 1)))
        print("  doctor --offline: no codex binary here, the report came out (findings expected)")

    shutil.copy(SMOKE_APP, app_dir / "app.py")
    sockets = Path(tempfile.mkdtemp(prefix="ctpkg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        print("  " + run([vpy, "app.py", sockets], cwd=app_dir).strip().splitlines()[-1])
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    # No config file in app_dir: mypy's defaults plus --strict, as a user's fresh project would have.
    mypy: list[str | Path] = [sys.executable, "-m", "mypy", "--strict", "--python-executable", vpy, "app.py"]
    print("  " + run(mypy, cwd=app_dir).strip().splitlines()[-1])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sets", default="floors,newest", help="comma-separated: floors, newest")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the virtualenvs")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (its path is printed)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="codex-trio-package-check-"))
    results = {}
    try:
        wheel = build(work / "dist")
        for name in args.sets.split(","):
            if name not in ("floors", "newest"):
                parser.error(f"unknown set {name!r}")
            results[name] = check_set(name, wheel, args.python, work)
    except CheckFailed as exc:
        print(f"package check FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"package check passed in {time.monotonic() - started:.0f} s")
    for name, summary in results.items():
        print(f"  {name}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
