"""``./dev`` reads the pin and the floor out of the package with ``sed``: a reformatted line must fail here, not
silently install or test the wrong codex."""

from __future__ import annotations

import subprocess
from pathlib import Path

from codex_trio._doctor import MIN_CODEX_VERSION
from codex_trio._pins import PINNED_CODEX_VERSION

ROOT = Path(__file__).resolve().parents[2]


def _bash(script: str, tmp_path: Path) -> str:
    # npm is stubbed to fail, so `./dev compat`'s default set does not ask the registry for the newest version.
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "npm").write_text("#!/bin/sh\nexit 1\n")
    (stub / "npm").chmod(0o755)
    done = subprocess.run(
        ["bash", "-c", f'export PATH="{stub}:$PATH"; set -euo pipefail; {script}'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def _dev() -> str:
    return (ROOT / "dev").read_text()


def test_dev_reads_the_pin(tmp_path: Path) -> None:
    line = next(line for line in _dev().splitlines() if line.startswith("CODEX_VERSION=$("))
    assert _bash(f'{line}; printf %s "$CODEX_VERSION"', tmp_path) == PINNED_CODEX_VERSION


def test_compat_default_set_starts_at_the_floor_and_holds_the_pin(tmp_path: Path) -> None:
    dev = _dev()
    start = dev.index("compat_default_versions() {")
    function = dev[start : dev.index("\n}\n", start) + 3]
    versions = _bash(f'{function}\nCODEX_VERSION="{PINNED_CODEX_VERSION}"; compat_default_versions', tmp_path).split()
    assert versions[0] == ".".join(map(str, MIN_CODEX_VERSION))
    assert PINNED_CODEX_VERSION in versions
    assert versions == sorted(versions, key=lambda v: tuple(int(part) for part in v.split(".")))
