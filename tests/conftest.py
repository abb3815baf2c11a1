"""Shared pytest setup: make the collection importable as ansible_collections.esxi2ami.migrate and
load the simulators' fixtures (each simulator owns its fixtures module)."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / ".build" / "collections"
_link = COLLECTIONS / "ansible_collections" / "esxi2ami" / "migrate"
if not _link.exists():
    _link.parent.mkdir(parents=True, exist_ok=True)
    _link.symlink_to(REPO, target_is_directory=True)
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
# ansible-playbook / ansible-doc started by tests see the same collections (ours + amazon.aws).
os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS)

pytest_plugins = [
    "tests.simulators.vcsim.fixtures",
    "tests.simulators.vmimport.fixtures",
    "tests.fixtures.guest.fixtures",
]
