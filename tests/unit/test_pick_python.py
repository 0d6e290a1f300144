"""deploy/pick_python.sh: the interpreter `make install` builds .venv from is the first usable candidate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "pick_python.sh"


def _pick(*candidates: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *candidates], capture_output=True, text=True, timeout=60, check=False)


def _fake_python(folder: Path, name: str, version: tuple[int, int]) -> str:
    """An interpreter that reports `version` to the script's check and runs nothing else."""
    path = folder / name
    path.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -c "import ensurepip, sys, venv; sys.exit({version!r} < (3, 11))"\n'
    )
    path.chmod(0o755)
    return str(path)


def test_the_first_candidate_that_is_3_11_or_newer_with_venv_wins(tmp_path: Path) -> None:
    old = _fake_python(tmp_path, "python3.10", (3, 10))
    newer = _fake_python(tmp_path, "python3.12", (3, 12))
    later = _fake_python(tmp_path, "python3.13", (3, 13))

    picked = _pick(str(tmp_path / "missing"), old, newer, later)

    assert picked.returncode == 0, picked.stderr
    assert picked.stdout.strip() == newer


def test_no_usable_candidate_fails_naming_them(tmp_path: Path) -> None:
    old = _fake_python(tmp_path, "python3.9", (3, 9))

    picked = _pick(old)

    assert picked.returncode == 1
    assert picked.stdout == ""
    assert old in picked.stderr


def test_by_default_it_picks_an_interpreter_that_runs_baton() -> None:
    picked = _pick()

    assert picked.returncode == 0, picked.stderr
    version = subprocess.run(
        [picked.stdout.strip(), "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert version.stdout.strip() == "True"
