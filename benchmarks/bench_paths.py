"""Where the benchmarks find the repository and the collection (shared by every benchmark script)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / ".build" / "collections"


def setup_paths():
    """Make `tests.*` and `ansible_collections.esxi2ami.migrate` importable, as tests/conftest.py does."""
    for p in (str(REPO), str(COLLECTIONS)):
        if p not in sys.path:
            sys.path.insert(0, p)
    link = COLLECTIONS / "ansible_collections" / "esxi2ami" / "migrate"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO, target_is_directory=True)
