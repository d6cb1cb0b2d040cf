"""Writes `.env` for `make run`: local mode and a fresh random JWT_SECRET, keeping whatever is there already."""

import secrets
from pathlib import Path

env_file = Path(".env")
lines = env_file.read_text().splitlines() if env_file.exists() else []
defaults = {"APP_ENV": "local", "JWT_SECRET": secrets.token_urlsafe(48)}
missing = [
    f"{name}={value}" for name, value in defaults.items() if not any(line.startswith(f"{name}=") for line in lines)
]
if missing:
    env_file.write_text("\n".join(lines + missing) + "\n")
    env_file.chmod(0o600)
    print(f".env: added {', '.join(entry.split('=', 1)[0] for entry in missing)}")
