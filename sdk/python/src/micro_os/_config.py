"""Where the daemon is and which token it takes: as the CLI finds them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import InvalidInput

DEFAULT_API = "http://127.0.0.1:8080"
# the keys of a config file the SDK reads; the rest of a daemon config (runtime, vm_subnet,
# ...) is the daemon's and is passed over
SDK_KEYS = ("api", "api_addr", "token", "token_file", "home", "timeout")


@dataclass
class Settings:
    url: str
    token: Optional[str]
    timeout: float = 300.0


def default_home() -> Path:
    if os.environ.get("MICRO_OS_HOME"):
        return Path(os.environ["MICRO_OS_HOME"])
    if os.geteuid() == 0:
        return Path("/var/lib/micro-os")
    return Path.home() / ".local/share/micro-os"


def _read_token(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, PermissionError):
        return None


def resolve(config_file: Optional[str] = None, url: Optional[str] = None, token: Optional[str] = None,
            timeout: Optional[float] = None) -> Settings:
    """Explicit arguments first, then the config file, then the environment
    (``MICRO_OS_API``, ``MICRO_OS_TOKEN``, the token in ``MICRO_OS_HOME``), then defaults."""
    cfg: dict[str, Any] = {}
    cfg_dir: Optional[Path] = None
    if config_file is not None:
        p = Path(config_file)
        try:
            cfg = json.loads(p.read_text())
        except FileNotFoundError:
            raise InvalidInput(f"config file {config_file!r} not found (give the path of a JSON file)") from None
        except json.JSONDecodeError as e:
            raise InvalidInput(f"config file {config_file!r} is not JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise InvalidInput(f"config file {config_file!r} must hold a JSON object")
        cfg_dir = p.resolve().parent
    if url is None:
        if cfg.get("api"):
            url = str(cfg["api"])
        elif cfg.get("api_addr"):
            url = "http://" + str(cfg["api_addr"])
        else:
            url = os.environ.get("MICRO_OS_API") or DEFAULT_API
    if token is None:
        token = cfg.get("token") or None
    if token is None and cfg.get("token_file"):
        path = Path(os.path.expanduser(str(cfg["token_file"])))
        token = _read_token(path if path.is_absolute() or cfg_dir is None else cfg_dir / path)
        if token is None:
            raise InvalidInput(f"token_file {cfg['token_file']!r} cannot be read (give the home's token file)")
    if token is None and cfg.get("home"):
        token = _read_token(Path(os.path.expanduser(str(cfg["home"]))) / "token")
    if token is None and cfg_dir is not None:
        # a config.json inside a micro-os home sits beside its token
        token = _read_token(cfg_dir / "token")
    if token is None:
        token = os.environ.get("MICRO_OS_TOKEN") or _read_token(default_home() / "token")
    t = float(timeout if timeout is not None else cfg.get("timeout", 300.0))
    return Settings(url=url.rstrip("/"), token=token, timeout=t)
