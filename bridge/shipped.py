"""Files the bridge ships beside its code: Alembic's script directory and the demo's event stream."""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """The directory `name` (`"migrations"` or `"fixtures"`) of this copy of the bridge: inside the package
    when it was installed from a wheel (`pip install .`: pyproject.toml maps both directories into it),
    else at the top of the source tree the package was imported from (an editable install, or
    PYTHONPATH=checkout). Found from this file, not by importing `bridge.<name>`, so a checkout put first on
    PYTHONPATH uses its own files, never those of the checkout an editable install maps."""
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name
