"""NFC disk downloads against a real HTTPS server on 127.0.0.1 with a certificate made for the test.

The server is the network edge: it sends what an ESXi host would (a body, a cut body, a refusal);
the client side is the real code with real TLS verification.
"""

import datetime
import http.server
import ipaddress
import os
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ansible_collections.esxi2ami.migrate.plugins.module_utils import vsphere

BODY = os.urandom(3 << 20)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (key and PEM files)."""
    tmp = tmp_path_factory.mktemp("tls")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "esxi.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    crt = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_path, crt_path = tmp / "key.pem", tmp / "crt.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    crt_path.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(crt_path)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        Handler.seen.append((self.path, self.headers.get("Cookie")))
        if self.headers.get("Cookie") != 'vmware_soap_session="abc"':
            self.send_response(403)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"forbidden")
            return
        self.send_response(200)
        if self.path.endswith("/short.vmdk"):  # announces more than it sends, then closes
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[: 1 << 20])
            self.close_connection = True
            return
        self.send_header("Transfer-Encoding", "chunked")  # like ESXi: no length known in advance
        self.end_headers()
        limit = (1 << 20) + 5 if self.path.endswith("/cut.vmdk") else len(BODY)
        for i in range(0, limit, 64 << 10):
            chunk = BODY[i : min(i + (64 << 10), limit)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if limit == len(BODY):
            self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


@pytest.fixture(scope="module")
def server(cert):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert[1], cert[0])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "https://127.0.0.1:%d" % httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _trusting(cert):
    ctx = vsphere.ssl_context(True)
    ctx.load_verify_locations(cert[1])
    return ctx


def _get(url, context, cookie='vmware_soap_session="abc"'):
    return b"".join(vsphere.nfc_download(url, cookie, context, chunk_size=256 << 10, timeout=30))


def test_download_with_verified_tls_and_the_session_cookie(server, cert):
    Handler.seen.clear()
    assert _get(server + "/nfc/lease-1/disk-0.vmdk", _trusting(cert)) == BODY
    assert Handler.seen == [("/nfc/lease-1/disk-0.vmdk", 'vmware_soap_session="abc"')]


def test_untrusted_certificate_fails_unless_verification_is_off(server):
    with pytest.raises(vsphere.VSphereError, match="TLS verification of the disk download disk-0.vmdk"):
        _get(server + "/nfc/lease-1/disk-0.vmdk", vsphere.ssl_context(True))
    assert _get(server + "/nfc/lease-1/disk-0.vmdk", vsphere.ssl_context(False)) == BODY


def test_wrong_session_is_refused_with_the_status(server, cert):
    with pytest.raises(vsphere.VSphereError, match="downloading disk-0.vmdk from 127.0.0.1:[0-9]+ failed: HTTP 403"):
        _get(server + "/nfc/lease-1/disk-0.vmdk", _trusting(cert), cookie='vmware_soap_session="other"')


def test_cut_chunked_body_is_an_error_not_a_short_disk(server, cert):
    got = []
    with pytest.raises(vsphere.VSphereError, match=r"download of cut.vmdk from .* failed after \d+ bytes"):
        for data in vsphere.nfc_download(server + "/nfc/l/cut.vmdk", 'vmware_soap_session="abc"', _trusting(cert)):
            got.append(data)
    assert sum(map(len, got)) <= (1 << 20) + 5


def test_short_body_with_a_length_is_an_error(server, cert):
    with pytest.raises(vsphere.VSphereError, match="short.vmdk"):
        _get(server + "/nfc/l/short.vmdk", _trusting(cert))


def test_plain_http_is_refused():
    with pytest.raises(vsphere.VSphereError, match="only https"):
        _get("http://127.0.0.1:1/nfc/l/disk-0.vmdk", vsphere.ssl_context(True))


def test_connection_refused_names_the_file():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(vsphere.VSphereError, match="download of disk-0.vmdk from 127.0.0.1:%d failed after 0" % port):
        _get("https://127.0.0.1:%d/nfc/l/disk-0.vmdk" % port, vsphere.ssl_context(False))
