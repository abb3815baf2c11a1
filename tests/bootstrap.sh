#!/usr/bin/env bash
# Install what `make test` and `make demo` need on a fresh Debian 12 machine, idempotently:
# Debian packages (when missing), the project venv (.venv), amazon.aws beside this collection in
# .build/collections, and ansible-test's pip bootstrap script when ../shared/tools provides it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-$REPO/.venv}
ANSIBLE_PKG_VERSION=${ANSIBLE_PKG_VERSION:-12.3.0}   # the `ansible` package that bundles amazon.aws 10.1.2

APT_PACKAGES=(python3-venv golang-go golang-github-vmware-govmomi-dev qemu-utils qemu-system-x86 debootstrap
  systemd-container libguestfs-tools zstd shellcheck bc iproute2 openssh-client rsync unzip socat git fdisk
  e2fsprogs util-linux make dosfstools mtools)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: not root; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=$VENV/.esxi2ami-requirements
want=$(cat requirements.txt tests/requirements-dev.txt | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: creating $VENV and installing Python packages"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -U pip 2> >(grep -v '^WARNING: Location' >&2)
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements-dev.txt 2> >(grep -v '^WARNING: Location' >&2)
  echo "$want" > "$stamp"
fi

# amazon.aws next to this collection (and ansible.posix, whose json callback the tests read), from the
# `ansible` community package: no Galaxy access needed.
COLL=$REPO/.build/collections/ansible_collections
if [ ! -f "$COLL/amazon/aws/MANIFEST.json" ] || [ ! -f "$COLL/ansible/posix/MANIFEST.json" ]; then
  echo "bootstrap: unpacking amazon.aws and ansible.posix from ansible==$ANSIBLE_PKG_VERSION"
  mkdir -p "$REPO/.build/dl" "$COLL"
  ls "$REPO"/.build/dl/ansible-"$ANSIBLE_PKG_VERSION"-*.whl >/dev/null 2>&1 || \
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps "ansible==$ANSIBLE_PKG_VERSION" \
      -d "$REPO/.build/dl" 2> >(grep -v '^WARNING: Location' >&2)
  rm -rf "$COLL/amazon/aws" "$COLL/ansible/posix"
  unzip -q -o "$REPO"/.build/dl/ansible-"$ANSIBLE_PKG_VERSION"-*.whl 'ansible_collections/amazon/aws/*' \
    'ansible_collections/ansible/posix/*' -d "$REPO/.build/collections"
fi
mkdir -p "$COLL/esxi2ami"
[ -e "$COLL/esxi2ami/migrate" ] || ln -s "$REPO" "$COLL/esxi2ami/migrate"

# ansible-test downloads a pip bootstrap script from a host this machine cannot reach; use the stand-in.
if [ -f "$REPO/../shared/tools/ansible-test-get-pip.py" ]; then
  for v in 24_2 25_0 25_1 25_2; do
    install -D -m 0644 "$REPO/../shared/tools/ansible-test-get-pip.py" "$HOME/.ansible/test/cache/get_pip_$v.py"
  done
fi
echo "bootstrap: ready (venv $VENV, collections $REPO/.build/collections)"
