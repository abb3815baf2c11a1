"""Start the vSphere simulator (vcsim with export leases) for tests, the demo, or by hand.

Plain Python (no pytest). ``Vcsim`` builds the Go binary when needed (build.sh, cached), makes the
disks it serves (real stream-optimized VMDKs, cached under .build/vcsim/disks), starts it on
127.0.0.1 with a free port and stops it again, leaving nothing behind.

    with Vcsim(lease_timeout=3) as sim:
        os.environ.update(sim.env)          # VMWARE_HOST, VMWARE_PORT, VMWARE_USER, ...
        sim.set_faults(cut_after=1 << 20)   # change faults while it runs

By hand: ``python -m tests.simulators.vcsim.launcher [--config vms.json]`` prints the environment
to export and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import select
import shlex
import shutil
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
BUILD_DIR = Path(os.environ.get("VCSIM_BUILD_DIR") or REPO / ".build" / "vcsim")
BINARY = BUILD_DIR / "vcsim"
DISK_CACHE = BUILD_DIR / "disks"

# Name of the VM with two disks and an attached ISO that every default start provides.
TWO_DISK_VM = "vm-two-disks"
TOOLS_ISO = "[LocalDS_0] iso/tools.iso"
DEFAULT_VMS = ("DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1")

_built = False


class VcsimError(RuntimeError):
    """The simulator could not be built or started, or rejected a request."""


def build() -> Path:
    """Build the binary unless the cached one matches the sources (once per process)."""
    global _built
    if not _built:
        res = subprocess.run([str(HERE / "build.sh")], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise VcsimError("building vcsim failed (tests/simulators/vcsim/build.sh):\n" + res.stdout + res.stderr)
        _built = True
    return BINARY


# --- disks -------------------------------------------------------------------------------------


def _atomic_convert(src: Path, fmt: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    cmd = [
        "qemu-img",
        "convert",
        "-f",
        fmt,
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized,adapter_type=lsilogic",
        str(src),
        str(tmp),
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise VcsimError("qemu-img not found: apt-get install qemu-utils") from None
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise VcsimError(f"converting {src} to a stream-optimized VMDK failed: {res.stderr.strip()}")
    os.replace(tmp, dest)


def _image_info(path: Path) -> dict:
    res = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise VcsimError(f"disk file {path} is not a readable disk image: {res.stderr.strip()}")
    return json.loads(res.stdout)


def is_stream_optimized(path: str | os.PathLike) -> bool:
    """True when the file is a VMDK whose descriptor says createType="streamOptimized"."""
    with open(path, "rb") as f:
        head = f.read(4096)
    return head[:4] == b"KDMV" and b'createType="streamOptimized"' in head


def prepare_disk(path: str | os.PathLike) -> Path:
    """Return a stream-optimized VMDK for a disk file (raw, qcow2, any VMDK), converting once.

    Conversions are cached under .build/vcsim/disks keyed by the file's path, size and mtime.
    """
    src = Path(path).resolve()
    if not src.is_file():
        raise VcsimError(f"disk file {src} does not exist; give the path of a raw image or VMDK")
    if is_stream_optimized(src):
        return src
    st = src.stat()
    key = hashlib.sha256(f"{src}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = DISK_CACHE / f"{src.stem}-{key}.vmdk"
    if dest.exists():
        os.utime(dest)  # recently used: kept by _prune_cache
    else:
        fmt = _image_info(src).get("format", "raw")
        _atomic_convert(src, fmt, dest)
        _prune_cache(keep=dest)
    return dest


CACHE_KEEP = 16  # converted disks kept (least recently used go first)


def _prune_cache(keep: Path) -> None:
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:  # pruned by a concurrent run
            return 0

    converted = [p for p in DISK_CACHE.glob("*.vmdk") if not p.name.startswith("default-") and p != keep]
    converted.sort(key=mtime, reverse=True)
    for old in converted[CACHE_KEEP - 1 :]:
        old.unlink(missing_ok=True)


def _mbr(size: int) -> bytes:
    """A DOS partition table with one Linux partition from 1 MiB to the end."""
    start = 2048
    entry = struct.pack("<B3sB3sII", 0x80, b"\x00\x02\x00", 0x83, b"\xfe\xff\xff", start, size // 512 - start)
    return b"\x00" * 440 + b"VCSM" + b"\x00\x00" + entry + b"\x00" * 48 + b"\x55\xaa"


def _make_raw(path: Path, size: int, seed: int, label: str) -> None:
    """A small sparse disk: partition table, a text marker and some incompressible data."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(_mbr(size))
        f.seek(1 << 20)
        f.write(f"esxi2ami vcsim test disk {label}\n".encode().ljust(512, b"\0"))
        for offset in (1 << 20) + 4096, size // 2:
            f.seek(offset)
            f.write(rnd.randbytes(192 << 10))


DISK_RECIPE = 1  # bump when _make_raw changes


def default_disks() -> dict[str, Path]:
    """The cached stream-optimized VMDKs served by default: "boot" (8 MiB) and "data" (4 MiB)."""
    out = {}
    for label, size, seed in (("boot", 8 << 20, 1), ("data", 4 << 20, 2)):
        dest = DISK_CACHE / f"default-{label}-r{DISK_RECIPE}.vmdk"
        if not dest.exists():
            DISK_CACHE.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=DISK_CACHE) as tmp:
                raw = Path(tmp) / f"{label}.raw"
                _make_raw(raw, size, seed, label)
                _atomic_convert(raw, "raw", dest)
        out[label] = dest
    return out


def default_config() -> dict:
    """The VMs every start adds to the VPX inventory (unless defaults=False)."""
    disks = default_disks()
    return {
        "vms": [
            {
                "name": TWO_DISK_VM,
                "guest_id": "debian11_64Guest",
                "firmware": "bios",
                "power": "poweredOn",
                "disks": [{"file": str(disks["boot"])}, {"file": str(disks["data"])}],
                "cdrom": {"iso": TOOLS_ISO, "connected": True},
            }
        ]
    }


def disk_vm(name: str, *files: str | os.PathLike, **options) -> dict:
    """A config entry for a VM whose disks are served from the given raw images or VMDKs.

    ``Vcsim(config={"vms": [disk_vm("debian12", "/path/disk.raw", firmware="efi")]})``; options
    are the other config keys (folder, power, guest_id, firmware, tools, uuid, cdrom, ...). Raw
    images are converted to stream-optimized VMDKs once (cached by path, size and mtime).
    """
    if not files:
        raise VcsimError(f"disk_vm({name!r}): give at least one disk file")
    return {"name": name, "disks": [{"file": str(f)} for f in files], **options}


def resolve_config(config: dict | None, defaults: bool = True) -> dict:
    """Merge the user's VMs after the default ones and turn every disk file into a VMDK path."""
    if config is not None and not isinstance(config, dict):
        raise VcsimError(f"vcsim config must be a dict like {{'vms': [...]}}, got {type(config).__name__}")
    vms = list(default_config()["vms"]) if defaults else []
    user_vms = copy.deepcopy((config or {}).get("vms", []))
    unknown = set(config or {}) - {"vms"}
    if unknown:
        raise VcsimError(f"vcsim config: unknown keys {sorted(unknown)}; only 'vms' is supported")
    names = {vm.get("name") for vm in user_vms}
    vms = [vm for vm in vms if vm["name"] not in names] + user_vms
    for vm in vms:
        for disk in vm.get("disks", []):
            if disk.get("file"):
                disk["file"] = str(prepare_disk(disk["file"]))
    return {"vms": vms}


# --- the server --------------------------------------------------------------------------------


def tls_material(directory: Path) -> dict[str, Path]:
    """A private CA and a 2048-bit server certificate for 127.0.0.1 (made once per directory).

    Lets tests run with TLS verification ON, as users should: trust the CA (SSL_CERT_FILE) and set
    VMWARE_VALIDATE_CERTS=true. Go's built-in test certificate is RSA-1024, which OpenSSL refuses.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    files = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    if all(f.exists() for f in files.values()):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("esxi2ami test CA"))
        .issuer_name(name("esxi2ami test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    files["key"].chmod(0o600)
    return files


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the simulator's self-signed test certificate
    return ctx


class Vcsim:
    """One vcsim process on 127.0.0.1:<free port>. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        config: dict | None = None,
        lease_timeout: float = 300,
        rate_limit: int | None = None,
        cut_after: int | None = None,
        user: str = "user",
        password: str = "pass",  # noqa: S107
        api: str = "7.0.3.0",
        shutdown_delay: float = 1.0,
        cut_count: int | None = None,
        defaults: bool = True,
        start_timeout: float = 60,
        trusted_tls: bool = False,
    ):
        self.config = config
        # trusted_tls: serve a certificate from a private CA (self.ca_file) so clients can verify it.
        self.trusted_tls = trusted_tls
        self.ca_file: Path | None = None
        self.lease_timeout = lease_timeout
        self.rate_limit = rate_limit
        self.cut_after = cut_after
        self.cut_count = cut_count
        self.shutdown_delay = shutdown_delay
        self.user = user
        self.password = password
        self.api = api
        self.defaults = defaults
        self.start_timeout = start_timeout
        self.host: str | None = None
        self.port: int | None = None
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None

    # -- life cycle

    def start(self) -> Vcsim:
        if self.proc:
            raise VcsimError("vcsim already started")
        binary = build()
        resolved = resolve_config(self.config, self.defaults)
        self.workdir = Path(tempfile.mkdtemp(prefix="vcsim-"))
        cfg_file = self.workdir / "config.json"
        cfg_file.write_text(json.dumps(resolved, indent=2))
        cmd = [
            str(binary),
            "-l",
            "127.0.0.1:0",
            "-api",
            self.api,
            "-u",
            f"{self.user}:{self.password}",
            "-config",
            str(cfg_file),
            "-default-disk",
            str(default_disks()["boot"]),
            "-lease-timeout",
            str(self.lease_timeout),
            "-shutdown-delay",
            str(self.shutdown_delay),
            "-rate-limit",
            str(self.rate_limit or 0),
            "-cut-after",
            str(self.cut_after or 0),
            "-cut-count",
            str(self.cut_count or 0),
            "-watch-stdin",
            "-cleanup-dir",
            str(self.workdir),
        ]
        if self.trusted_tls:
            tls = tls_material(BUILD_DIR / "tls")
            self.ca_file = tls["ca"]
            cmd += ["-tls-cert", str(tls["cert"]), "-tls-key", str(tls["key"])]
        env = dict(os.environ, TMPDIR=str(self.workdir))
        self.log_path = self.workdir / "vcsim.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
                cwd=self.workdir,
            )
        try:
            line = self._first_line()
            u = urllib.parse.urlsplit(line)
            self.host, self.port = u.hostname, u.port
            self.url = f"https://{self.host}:{self.port}/sdk"
            self._wait_ready()
        except BaseException:
            self.stop()  # the error message carries the log's tail
            raise
        return self

    def _first_line(self) -> str:
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VcsimError(f"vcsim printed no URL within {self.start_timeout}s; log:\n{self.log_tail()}")
            ready = select.select([fd], [], [], min(left, 0.5))[0]
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(5)
                    raise VcsimError(
                        f"vcsim exited with {self.proc.returncode} before starting; log:\n{self.log_tail()}"
                    )
                buf += chunk
        return buf.split(b"\n", 1)[0].decode().strip()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                with urllib.request.urlopen(
                    f"https://{self.host}:{self.port}/sdk/vimServiceVersions.xml", context=_insecure(), timeout=5
                ) as r:
                    if self.api.encode() in r.read():
                        return
            except (OSError, urllib.error.URLError) as e:
                if time.monotonic() > deadline:
                    raise VcsimError(f"vcsim at {self.host}:{self.port} not answering: {e}") from e
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc:
            try:
                proc.stdin.close()  # -watch-stdin: the simulator exits on EOF
            except OSError:
                pass
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(3)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(3)
            proc.stdout.close()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Vcsim:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what clients need

    @property
    def env(self) -> dict[str, str]:
        """The variables a user would export for the collection's modules (vmware.vmware names)."""
        return {
            "VMWARE_HOST": self.host,
            "VMWARE_PORT": str(self.port),
            "VMWARE_USER": self.user,
            "VMWARE_PASSWORD": self.password,
            # With trusted_tls, a user would trust the CA and keep verification on (SSL_CERT_FILE=self.ca_file).
            "VMWARE_VALIDATE_CERTS": "true" if self.trusted_tls else "false",
        }

    def _faults_request(self, body: dict | None) -> dict:
        if not self.proc:
            raise VcsimError("vcsim is not running")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"https://{self.host}:{self.port}/_sim/faults",
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=_insecure(), timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise VcsimError(f"vcsim refused faults {body}: {e.read().decode().strip()}") from e

    def faults(self) -> dict:
        """The current run-time knobs: lease_timeout, rate_limit, cut_after, cut_count, shutdown_delay."""
        return self._faults_request(None)

    _UNSET = object()

    def set_faults(
        self, rate_limit=_UNSET, cut_after=_UNSET, lease_timeout=_UNSET, cut_count=_UNSET, shutdown_delay=_UNSET
    ) -> dict:
        """Change faults at run time; None (or 0) clears rate_limit / cut_after. Returns the new knobs.

        rate_limit and cut_after apply to downloads that start afterwards, lease_timeout to leases
        opened afterwards; cut_count limits the cut to the next N downloads.
        """
        given = {
            "rate_limit": rate_limit,
            "cut_after": cut_after,
            "lease_timeout": lease_timeout,
            "cut_count": cut_count,
            "shutdown_delay": shutdown_delay,
        }
        body = {k: (v or 0) for k, v in given.items() if v is not self._UNSET}
        return self._faults_request(body)

    def connect(self):
        """A pyVmomi ServiceInstance logged in to this simulator (certificate not verified)."""
        from pyVim.connect import SmartConnect  # noqa: PLC0415 - pyVmomi only when asked for

        return SmartConnect(
            host=self.host, port=self.port, user=self.user, pwd=self.password, disableSslCertValidation=True
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.simulators.vcsim.launcher",
        description="Run the vSphere simulator until Ctrl-C and print the env to use it.",
    )
    p.add_argument("--config", help='JSON file {"vms": [...]} with VMs to add (see README.md)')
    p.add_argument("--no-defaults", action="store_true", help=f"do not add {TWO_DISK_VM}")
    p.add_argument("--lease-timeout", type=float, default=300)
    p.add_argument("--rate-limit", type=int, help="NFC download bytes/s")
    p.add_argument("--cut-after", type=int, help="drop NFC downloads after N bytes")
    p.add_argument("--shutdown-delay", type=float, default=1.0)
    p.add_argument("--user", default="user")
    p.add_argument("--password", default="pass")
    p.add_argument("--api", default="7.0.3.0")
    args = p.parse_args(argv)
    config = None
    if args.config:
        try:
            config = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as e:
            p.error(f"--config {args.config}: {e}")
    sim = Vcsim(
        config=config,
        lease_timeout=args.lease_timeout,
        rate_limit=args.rate_limit,
        cut_after=args.cut_after,
        user=args.user,
        password=args.password,
        api=args.api,
        shutdown_delay=args.shutdown_delay,
        defaults=not args.no_defaults,
    )
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with sim:
        for k, v in sim.env.items():
            print(f"export {k}={shlex.quote(v)}")
        print(
            f"# SOAP: {sim.url}  faults: curl -k https://{sim.host}:{sim.port}/_sim/faults "
            "-d '{\"cut_after\": 1048576}'"
        )
        print(f"# log: {sim.log_path}  (Ctrl-C stops it)", flush=True)
        try:
            while not stop and sim.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
