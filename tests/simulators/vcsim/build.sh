#!/bin/sh
# Build vcsim (govmomi 0.24.2's simulator + overlay/*.go) from Debian packages only:
#   apt-get install golang-go golang-github-vmware-govmomi-dev
# Output: ${VCSIM_BUILD_DIR:-<repo>/.build/vcsim}/vcsim. Skipped when the stamp (hash of the Go
# sources, this script, go and govmomi versions) matches. Safe to run concurrently (flock).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=${VCSIM_BUILD_DIR:-$repo/.build/vcsim}
export GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS=
export GOCACHE="${GOCACHE:-$out/gocache}"
SIM=$GOPATH/src/github.com/vmware/govmomi/simulator

for tool in go flock sha256sum; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (apt-get install golang-go util-linux coreutils)" >&2; exit 1; }
done
[ -f "$SIM/virtual_machine.go" ] || { echo "build.sh: $SIM missing (apt-get install golang-github-vmware-govmomi-dev)" >&2; exit 1; }

mkdir -p "$out"
exec 9>"$out/build.lock"
flock 9

stamp=$(
    cd "$here"
    cat build.sh main.go overlay/*.go
    go version
    dpkg-query -W -f '${Version}' golang-github-vmware-govmomi-dev 2>/dev/null || true
    sha256sum "$SIM/virtual_machine.go" "$SIM/http_nfc_lease.go"
)
stamp=$(printf '%s' "$stamp" | sha256sum | cut -d' ' -f1)
if [ -x "$out/vcsim" ] && [ "$(cat "$out/vcsim.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "vcsim up to date: $out/vcsim"
    exit 0
fi

# A copy of the stock virtual_machine.go whose ShutdownGuest, powerVMTask.Run and configure are
# renamed, so overlay/zz_guest.go can wrap them. Each rename must hit exactly once.
gen="$out/gen"
mkdir -p "$gen"
rename() { # from to file
    n=$(grep -c -F "$1" "$3" || true)
    [ "$n" = 1 ] || { echo "build.sh: expected one '$1' in $3, found $n (govmomi changed?)" >&2; exit 1; }
    sed -i "s/$(printf '%s' "$1" | sed 's/[][\.*^$/]/\\&/g')/$2/" "$3"
}
cp "$SIM/virtual_machine.go" "$gen/virtual_machine.go"
rename 'func (vm *VirtualMachine) ShutdownGuest(' 'func (vm *VirtualMachine) shutdownGuestStock(' "$gen/virtual_machine.go"
rename 'func (c *powerVMTask) Run(' 'func (c *powerVMTask) runStock(' "$gen/virtual_machine.go"
rename 'func (vm *VirtualMachine) configure(spec' 'func (vm *VirtualMachine) configureStock(spec' "$gen/virtual_machine.go"

{
    printf '{"Replace":{\n'
    printf '  "%s/virtual_machine.go": "%s/virtual_machine.go"' "$SIM" "$gen"
    for f in "$here"/overlay/*.go; do
        b=$(basename "$f")
        [ "$b" = http_nfc_lease.go ] || [ ! -e "$SIM/$b" ] || { echo "build.sh: $SIM/$b exists; rename overlay/$b" >&2; exit 1; }
        printf ',\n  "%s/%s": "%s"' "$SIM" "$b" "$f"
    done
    printf '\n}}\n'
} > "$out/overlay.json"

cd "$here"
go build -overlay "$out/overlay.json" -o "$out/vcsim.tmp" .
mv "$out/vcsim.tmp" "$out/vcsim"
echo "$stamp" > "$out/vcsim.stamp"
echo "built $out/vcsim"
