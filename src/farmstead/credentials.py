"""The credentials file: the tokens this user holds for the servers they run, by server URL.

`farmstead serve` writes its first admin token here (a file only the user can read, in a
directory only they can enter), under every URL the CLI on this machine may use for it; the
CLI finds it there when neither `--token` nor FARMSTEAD_TOKEN is given.
"""

import json
import os
from pathlib import Path

ENV = "FARMSTEAD_CREDENTIALS_FILE"


def default_path() -> Path:
    """FARMSTEAD_CREDENTIALS_FILE; else credentials.json in $XDG_CONFIG_HOME/farmstead (or
    ~/.config/farmstead)."""
    if given := os.environ.get(ENV):
        return Path(given)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "farmstead" / "credentials.json"


def _key(url: str) -> str:
    return url.rstrip("/").lower()


def read(path: Path | None = None) -> dict[str, str]:
    """{server URL: token}; empty when the file is missing or unreadable."""
    try:
        data = json.loads((path or default_path()).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {_key(str(k)): str(v) for k, v in data.items() if isinstance(v, str)}


def token_for(url: str, path: Path | None = None) -> str | None:
    """The token held for `url`, if any."""
    return read(path).get(_key(url))


def local_urls(host: str, port: int) -> list[str]:
    """The URLs a client on this machine may use for a server bound to `host`:`port`."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    if host not in ("0.0.0.0", "::", "", "127.0.0.1", "localhost", "::1"):
        names.append(f"[{host}]" if ":" in host else host)
    return [f"http://{name}:{port}" for name in names]


def store(urls: list[str], token: str, path: Path | None = None) -> Path:
    """Hold `token` for `urls` (other entries kept); written atomically, mode 0600."""
    path = path or default_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = read(path) | {_key(u): token for u in urls}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path
