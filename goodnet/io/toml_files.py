"""TOML settings files (a population manifest, a zoo configuration): read as data, each problem
refused in one line naming the file."""

from __future__ import annotations

from typing import Any

from ..errors import SettingsError, shown_path
from .file_checks import check_input_file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def read_toml(path: str, what: str) -> dict[str, Any]:
    """The document of the TOML file at `path`, `what` it is (e.g. "a zoo configuration") naming it
    when it is missing or not a file."""
    where = shown_path(path)
    check_input_file(path, what, SettingsError)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{where}: not a valid TOML file ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"{where}: cannot be read ({e})") from None
    except RecursionError:
        raise SettingsError(f"{where}: nested too deeply to read") from None


def refuse_unknown_keys(label: str, table: dict, known: tuple[str, ...], shown: tuple[str, ...] | None = None) -> None:
    """Refuse a TOML table holding a key not in `known`, in one line starting with `label` and
    listing `shown` (default: `known`) as the keys it takes."""
    unknown = sorted(set(table) - set(known))
    if unknown:
        listed = ", ".join(known if shown is None else shown)
        raise SettingsError(f"{label}: unknown key(s) {', '.join(unknown)} (known: {listed})")
