"""The guest's IMDSv2 key-sync script (roles/guest_prepare/files/esxi2ami-fetch-ssh-keys.sh), run for
real with /bin/sh against a fake instance metadata service listening on a loopback address."""

import base64
import http.server
import os
import pwd
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "roles" / "guest_prepare" / "files" / "esxi2ami-fetch-ssh-keys.sh"
BEGIN = "# BEGIN esxi2ami imds keys"
END = "# END esxi2ami imds keys"
TOKEN = "AQAEAFakeTokenForTests_0123456789abcdef=="


class FakeIMDS(http.server.ThreadingHTTPServer):
    """IMDSv2 as far as the script uses it. ``keys`` maps index -> (name, body); ``mode`` injects faults."""

    daemon_threads = True

    def __init__(self, address=("127.0.0.1", 0), family=socket.AF_INET):
        self.address_family = family
        self.keys = {}
        self.mode = "ok"
        self.requests = []
        super().__init__(address, Handler)

    @property
    def endpoint(self):
        host, port = self.server_address[:2]
        return "http://[%s]:%d" % (host, port) if ":" in host else "http://%s:%d" % (host, port)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code, body="", ctype="text/plain"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):  # noqa: N802 - http.server naming
        srv = self.server
        srv.requests.append(("PUT", self.path, dict(self.headers)))
        if srv.mode == "slow":
            time.sleep(3)
        if srv.mode == "refuse-token":
            return self._send(403, "Forbidden")
        if srv.mode == "html":
            return self._send(200, "<html><body>Welcome to the hotel wifi</body></html>", "text/html")
        if self.path != "/latest/api/token" or "X-aws-ec2-metadata-token-ttl-seconds" not in self.headers:
            return self._send(400)
        return self._send(200, TOKEN)

    def do_GET(self):  # noqa: N802 - http.server naming
        srv = self.server
        srv.requests.append(("GET", self.path, dict(self.headers)))
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            return self._send(401)
        if self.path == "/latest/meta-data/public-keys/":
            if srv.mode == "garbage-index":
                return self._send(200, "<!DOCTYPE html>\n<title>oops</title>")
            if not srv.keys:
                return self._send(404)
            return self._send(200, "\n".join("%d=%s" % (i, srv.keys[i][0]) for i in sorted(srv.keys)))
        prefix = "/latest/meta-data/public-keys/"
        if self.path.startswith(prefix) and self.path.endswith("/openssh-key"):
            index = self.path[len(prefix) : -len("/openssh-key")]
            if index.isdigit() and int(index) in srv.keys:
                return self._send(200, srv.keys[int(index)][1] + "\n")
        return self._send(404)


@pytest.fixture
def imds():
    server = FakeIMDS()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _keygen(tmp_path, kind, bits=None, comment="user@host"):
    path = tmp_path / ("k-%s-%s-%s" % (kind, bits, os.urandom(4).hex()))
    cmd = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)]
    if bits:
        cmd += ["-b", str(bits)]
    subprocess.run(cmd, check=True)
    return Path(str(path) + ".pub").read_text().strip()


def _sshstr(data):
    return struct.pack(">I", len(data)) + data


def _sk_ed25519():
    blob = _sshstr(b"sk-ssh-ed25519@openssh.com") + _sshstr(os.urandom(32)) + _sshstr(b"ssh:")
    return "sk-ssh-ed25519@openssh.com %s yubikey" % base64.b64encode(blob).decode()


def _sk_ecdsa():
    point = b"\x04" + os.urandom(64)
    blob = _sshstr(b"sk-ecdsa-sha2-nistp256@openssh.com") + _sshstr(b"nistp256") + _sshstr(point) + _sshstr(b"ssh:")
    return "sk-ecdsa-sha2-nistp256@openssh.com %s" % base64.b64encode(blob).decode()


class Guest:
    """A home with an authorized_keys file, a config file the role would write, and the script."""

    def __init__(self, tmp_path, endpoint):
        self.tmp = tmp_path
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.ssh_dir = tmp_path / "home" / ".ssh"
        self.auth = self.ssh_dir / "authorized_keys"
        self.conf = tmp_path / "ssh-keys.conf"
        self.write_conf(endpoint)

    def write_conf(self, endpoint, timeout=2):
        self.conf.write_text(
            "# written by the guest_prepare role\nIMDS_ENDPOINT=%s\nLOGIN_USER=%s\nAUTHORIZED_KEYS=%s\nTOKEN_TTL=60\n"
            "TIMEOUT=%d\n" % (endpoint, self.user, self.auth, timeout)
        )

    def run(self, *args, client=None, env=None):
        full = dict(os.environ, ESXI2AMI_SSH_KEYS_CONF=str(self.conf), TMPDIR=str(self.tmp))
        if client:
            full["ESXI2AMI_HTTP_CLIENT"] = client
        full.update(env or {})
        return subprocess.run(
            ["/bin/sh", str(SCRIPT), *args], env=full, capture_output=True, text=True, timeout=120, check=False
        )

    def block(self):
        lines = self.auth.read_text().splitlines()
        return lines[lines.index(BEGIN) + 1 : lines.index(END)]

    def others(self):
        lines = self.auth.read_text().splitlines()
        if BEGIN not in lines:
            return lines
        return lines[: lines.index(BEGIN)] + lines[lines.index(END) + 1 :]


@pytest.fixture
def guest(tmp_path, imds):
    return Guest(tmp_path, imds.endpoint)


def _assert_only_v2(imds):
    assert imds.requests, "the script never asked the metadata service"
    for method, path, headers in imds.requests:
        if method == "GET":
            assert headers.get("X-aws-ec2-metadata-token") == TOKEN, "IMDSv1 request: %s" % path
        else:
            assert path == "/latest/api/token"
            assert headers.get("X-aws-ec2-metadata-token-ttl-seconds") == "60"


@pytest.mark.parametrize("client", ["curl", "wget"])
def test_fresh_home_gets_key_with_right_modes(tmp_path, imds, guest, client):
    key = _keygen(tmp_path, "ed25519")
    imds.keys = {0: ("my-key", key)}
    res = guest.run(client=client)
    assert res.returncode == 0, res.stderr
    assert guest.block() == [key]
    assert stat.S_IMODE(guest.ssh_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(guest.auth.stat().st_mode) == 0o600
    assert guest.auth.stat().st_uid == os.getuid()
    assert "1 key(s) from IMDS written" in res.stderr
    _assert_only_v2(imds)
    # nothing left behind next to the file (temp file was renamed into place)
    assert sorted(p.name for p in guest.ssh_dir.iterdir()) == ["authorized_keys"]


def test_all_current_key_types_and_several_indexes(tmp_path, imds, guest):
    keys = [
        _keygen(tmp_path, "ed25519"),
        _keygen(tmp_path, "ecdsa", 256),
        _keygen(tmp_path, "ecdsa", 384),
        _keygen(tmp_path, "ecdsa", 521),
        _keygen(tmp_path, "rsa", 3072),
        _sk_ed25519(),
        _sk_ecdsa(),
    ]
    imds.keys = {i: ("key%d" % i, k) for i, k in enumerate(keys)}
    res = guest.run()
    assert res.returncode == 0, res.stderr
    assert guest.block() == keys
    fetched = sorted(p for m, p, _h in imds.requests if p.endswith("/openssh-key"))
    assert fetched == sorted("/latest/meta-data/public-keys/%d/openssh-key" % i for i in range(len(keys)))
    _assert_only_v2(imds)


def test_user_keys_kept_rotation_and_rerun_without_change(tmp_path, imds, guest):
    own = _keygen(tmp_path, "ed25519", comment="own-key")
    guest.ssh_dir.mkdir(parents=True)
    guest.auth.write_text('# my own keys\n%s\ncommand="/bin/true" %s\n' % (own, own))
    old = _keygen(tmp_path, "ecdsa", 256, comment="old")
    imds.keys = {0: ("old", old)}
    assert guest.run().returncode == 0
    before = guest.others()
    assert guest.block() == [old]
    assert before == ["# my own keys", own, 'command="/bin/true" %s' % own]

    # same keys again: file not rewritten (same inode)
    inode = guest.auth.stat().st_ino
    res = guest.run()
    assert res.returncode == 0 and "already in" in res.stderr
    assert guest.auth.stat().st_ino == inode

    # rotation: the old key leaves the block, the user's own lines stay as they were
    new = _keygen(tmp_path, "ed25519", comment="new")
    imds.keys = {0: ("new", new), 1: ("second", old)}
    assert guest.run().returncode == 0
    assert guest.block() == [new, old]
    imds.keys = {0: ("new", new)}
    assert guest.run().returncode == 0
    assert guest.block() == [new]
    assert guest.others() == before
    assert guest.auth.read_text().count(BEGIN) == 1

    # an instance launched without a key pair: the block goes, the user's keys stay
    imds.keys = {}
    assert guest.run().returncode == 0
    assert BEGIN not in guest.auth.read_text()
    assert guest.others() == before


BAD_KEYS = {
    "html": "<html><body>Not a key</body></html>",
    "dsa": "ssh-dss AAAAB3NzaC1kc3MAAACBAP" + "A" * 80 + " old",
    "bad-base64": "ssh-ed25519 AAAA!!!notbase64 x",
    "short-body": "ssh-ed25519 AAAAC3Nz x",
    "options-prefix": 'command="/bin/sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG' + "A" * 40 + " x",
    "control-chars": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG" + "A" * 42 + " evil\x1b[2J",
}


@pytest.mark.parametrize("bad", sorted(BAD_KEYS))
def test_garbage_keys_change_nothing(tmp_path, imds, guest, bad):
    good = _keygen(tmp_path, "ed25519")
    imds.keys = {0: ("good", good)}
    assert guest.run().returncode == 0
    content = guest.auth.read_bytes()
    imds.keys = {0: ("good", _keygen(tmp_path, "ecdsa", 256)), 1: ("bad", BAD_KEYS[bad])}
    res = guest.run()
    assert res.returncode == 1, res.stderr
    assert "left unchanged" in res.stderr
    assert guest.auth.read_bytes() == content


@pytest.mark.parametrize("mode", ["html", "garbage-index", "refuse-token", "slow"])
def test_broken_or_hostile_imds_changes_nothing(tmp_path, imds, guest, mode):
    good = _keygen(tmp_path, "ed25519")
    imds.keys = {0: ("good", good)}
    assert guest.run().returncode == 0
    content = guest.auth.read_bytes()
    imds.keys = {0: ("other", _keygen(tmp_path, "ed25519", comment="other"))}
    imds.mode = mode
    guest.write_conf(imds.endpoint, timeout=1)
    res = guest.run()
    assert res.returncode == 1, res.stderr
    assert guest.auth.read_bytes() == content
    if mode in ("refuse-token", "html", "slow"):
        # no token: the script must not fall back to IMDSv1 GETs
        assert [m for m, _p, _h in imds.requests[-1:]] == ["PUT"]
        assert not any(m == "GET" and "X-aws-ec2-metadata-token" not in h for m, _p, h in imds.requests)


def test_unreachable_imds_creates_nothing(tmp_path, guest):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    guest.write_conf("http://127.0.0.1:%d" % port, timeout=1)
    res = guest.run()
    assert res.returncode == 1
    assert "IMDSv1 is never used" in res.stderr
    assert not guest.ssh_dir.exists()


def test_boot_mode_retries_until_imds_answers(tmp_path, guest):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    guest.write_conf("http://127.0.0.1:%d" % port, timeout=1)
    key = _keygen(tmp_path, "ed25519")
    started = {}

    def start_late():
        time.sleep(1.5)
        server = FakeIMDS(("127.0.0.1", port))
        server.keys = {0: ("k", key)}
        started["server"] = server
        server.serve_forever()

    thread = threading.Thread(target=start_late, daemon=True)
    thread.start()
    try:
        res = guest.run("--boot", env={"ESXI2AMI_BOOT_RETRIES": "30", "ESXI2AMI_BOOT_DELAY": "1"})
    finally:
        while "server" not in started:
            time.sleep(0.1)
        started["server"].shutdown()
        started["server"].server_close()
    assert res.returncode == 0, res.stderr
    assert guest.block() == [key]


def test_ipv6_endpoint(tmp_path):
    try:
        server = FakeIMDS(("::1", 0), socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        guest = Guest(tmp_path, server.endpoint)
        assert server.endpoint.startswith("http://[::1]:")
        key = _keygen(tmp_path, "ed25519")
        server.keys = {0: ("k", key)}
        for client in ("curl", "wget"):
            res = guest.run(client=client)
            assert res.returncode == 0, res.stderr
            assert guest.block() == [key]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "conf, message",
    [
        ("IMDS_ENDPOINT=ftp://x\nLOGIN_USER=root\n", "IMDS_ENDPOINT must look like"),
        ("IMDS_ENDPOINT=http://127.0.0.1/latest\nLOGIN_USER=root\n", "without a path"),
        ("IMDS_ENDPOINT=http://127.0.0.1\nLOGIN_USER=no-such-user-esxi2ami\n", "does not exist"),
        ("IMDS_ENDPOINT=http://127.0.0.1\n", "LOGIN_USER is not set"),
        ("IMDS_ENDPOINT=http://127.0.0.1\nLOGIN_USER=root\nTIMEOUT=5s\n", "whole numbers"),
    ],
)
def test_bad_configuration_is_named(tmp_path, conf, message):
    path = tmp_path / "ssh-keys.conf"
    path.write_text(conf)
    env = dict(os.environ, ESXI2AMI_SSH_KEYS_CONF=str(path))
    res = subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2
    assert message in res.stderr


def test_symlinked_ssh_dir_is_refused(tmp_path, imds, guest):
    imds.keys = {0: ("k", _keygen(tmp_path, "ed25519"))}
    target = tmp_path / "elsewhere"
    target.mkdir()
    guest.ssh_dir.parent.mkdir(parents=True)
    guest.ssh_dir.symlink_to(target)
    res = guest.run()
    assert res.returncode == 2
    assert "symbolic link" in res.stderr
    assert list(target.iterdir()) == []


def test_script_is_posix_and_shellcheck_clean():
    subprocess.run(["shellcheck", "-s", "sh", str(SCRIPT)], check=True)
    subprocess.run(["/bin/sh", "-n", str(SCRIPT)], check=True)
