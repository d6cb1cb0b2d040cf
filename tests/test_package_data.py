"""The installed package (what the images run) carries every file the services load at run time, not just code."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Files read from the package at run time: Alembic's migrations and the mail templates.
RUNTIME_FILES = [
    *REPO.glob("shared/migrations/versions/*.py"),
    REPO / "shared/migrations/script.py.mako",
    *REPO.glob("shared/mail/templates/*"),
]


def test_the_wheel_carries_the_migrations_and_the_mail_templates(tmp_path: Path) -> None:
    # Built from a copy: setuptools' build/ folder in the work tree keeps files of earlier builds.
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    for package in ("shared", "auth_service", "users_service"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())

    expected = {path.relative_to(REPO).as_posix() for path in RUNTIME_FILES}
    assert any(name.startswith("shared/mail/templates/") for name in expected)
    assert expected <= packaged, sorted(expected - packaged)
