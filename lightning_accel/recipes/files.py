"""Where recipe files are: the bundled ones (listed by ``lightning-accel recipes``) and by name.

Nothing here imports Lightning, so listing and finding recipes answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _recipes_dir() -> Path:
    """The checkout's ``recipes/``, else the copy a wheel installs under ``<prefix>/share``."""
    checkout = Path(__file__).resolve().parents[2] / "recipes"
    installed = Path(sys.prefix) / "share" / "lightning-accel" / "recipes"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


RECIPES_DIR = _recipes_dir()


def bundled_recipes() -> list[Path]:
    """The recipe files shipped in ``recipes/``."""
    return sorted(RECIPES_DIR.glob("*.yaml"))


def description_of(text: str) -> str:
    """A recipe's first comment line, its one-line description."""
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def find_recipe(name: str | Path, *bases: Path) -> Path | None:
    """A recipe file by path or by bundled name; ``None`` if there is none.

    Tried in order: ``name`` as given (relative to the working folder), relative to each of
    ``bases`` (e.g. a sweep file's folder and the folders above it), then a bundled recipe of
    that name: ``small_cnn``, ``small_cnn.yaml`` and ``recipes/small_cnn.yaml`` all find
    ``<RECIPES_DIR>/small_cnn.yaml``, so a sweep file runs from any folder.

    Args:
        name: A path or a bundled recipe's name.
        bases: More folders to resolve a relative ``name`` against.

    Returns:
        The file, resolved, or ``None``.
    """
    path = Path(name)
    for base in (Path.cwd(), *bases):
        if (base / path).is_file():
            return (base / path).resolve()
    bundled = RECIPES_DIR / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and bundled.is_file():
        return bundled.resolve()
    return None
