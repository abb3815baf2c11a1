#!/usr/bin/env bash
# Run `ansible-test sanity` on a copy of the collection laid out as ansible-test requires
# (a copy at <tmp>/ansible_collections/esxi2ami/migrate, with amazon.aws beside it). No ignore files.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-$REPO/.venv}
# Outside the git work tree (inside it, ansible-test would list files with our .gitignore and skip all),
# one copy per run so parallel runs do not trample each other.
TOP=${SANITY_ROOT:-$(mktemp -d "${TMPDIR:-/tmp}/esxi2ami-sanity.XXXXXX")}
trap 'rm -rf "$TOP"' EXIT
ROOT=$TOP/ansible_collections
mkdir -p "$ROOT/esxi2ami/migrate" "$ROOT/amazon"
rsync -a --delete --files-from=<(git ls-files -co --exclude-standard) "$REPO/" "$ROOT/esxi2ami/migrate/"
rsync -a --delete "$REPO/.build/collections/ansible_collections/amazon/aws/" "$ROOT/amazon/aws/"
cd "$ROOT/esxi2ami/migrate"
PATH=$VENV/bin:$PATH "$VENV/bin/ansible-test" sanity --color no --python 3.11 --requirements "$@"
