"""moto server with the VM Import extension, bound to 127.0.0.1.

Run by launcher.py as a subprocess:

    python server.py --host 127.0.0.1 --port 0 --ready-file PATH [--config JSON]

Once listening it writes ``{"url": ..., "pid": ...}`` to the ready file (atomically).
It exits when its parent process goes away (PR_SET_PDEATHSIG plus a watchdog thread).

Besides moto's own endpoints (``/moto-api/reset`` ...) it serves a control API:

    GET    /_vmimport/config        current faults/settings (JSON)
    POST   /_vmimport/config        JSON object: settings to change (unknown keys -> 400)
    GET    /_vmimport/counters      {"calls": {action: n}, "throttled": {...}, "injected": {...}}
    DELETE /_vmimport/counters      zero the counters
    POST   /_vmimport/reset         moto reset + settings back to start values + counters zeroed
    GET    /_vmimport/health        {"ok": true}
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
import threading
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import vmimport_ext  # noqa: E402

CREDENTIAL_RE = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/([^/]+)/")
FORM = "application/x-www-form-urlencoded"


def _service_and_action(environ: dict, body: bytes | None) -> tuple[str | None, str | None]:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    service = None
    match = CREDENTIAL_RE.search(auth)
    if match:
        service = match.group(2)
    elif "X-Amz-Credential" in query:
        parts = query["X-Amz-Credential"][0].split("/")
        service = parts[3] if len(parts) > 3 else None
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return service, target.split(".")[-1]
    if "Action" in query:
        return service, query["Action"][0]
    if body is not None:
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if "Action" in form:
            return service, form["Action"][0]
    if service == "s3" or service is None:
        return service or "s3", environ.get("REQUEST_METHOD", "GET")
    return service, environ.get("REQUEST_METHOD", "GET")


def _throttled_response(start_response, service: str | None, environ: dict):
    """The throttling error each protocol returns: EC2, S3, query (IAM/STS) or JSON services."""
    request_id = str(uuid.uuid4())
    if service in (None, "ec2"):
        status, ctype = "503 Service Unavailable", "text/xml"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code>'
            f"<Message>Request limit exceeded.</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
    elif service == "s3":
        status, ctype = "503 Slow Down", "application/xml"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            f"<Message>Please reduce your request rate.</Message><RequestId>{request_id}</RequestId></Error>"
        )
    elif environ.get("HTTP_X_AMZ_TARGET"):
        status, ctype = "400 Bad Request", "application/x-amz-json-1.1"
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
    else:
        status, ctype = "400 Bad Request", "text/xml"
        body = (
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>"
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    data = body.encode()
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data)))])
    return [data]


def _ec2_error(start_response, code: str, message: str, status: int):
    from xml.sax.saxutils import escape

    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(code)}</Code>'
        f"<Message>{escape(message)}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    reason = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    start_response(f"{status} {reason}", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


def _json(start_response, status: str, payload) -> list[bytes]:
    body = json.dumps(payload, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def moto_reset() -> None:
    from moto.moto_api._internal.models import moto_api_backend

    moto_api_backend.reset()


class VmImportMiddleware:
    """Control endpoint, per-action call counters and EC2 throttling in front of moto."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_vmimport/"):
            return self.control(environ, start_response, path)
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        body = None
        if environ.get("CONTENT_TYPE", "").startswith(FORM):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
        service, action = _service_and_action(environ, body)
        fault = vmimport_ext.STATE.record_call(service, action) if action else None
        if fault is not None and fault["kind"] == "throttle":
            return _throttled_response(start_response, service, environ)
        if fault is not None:
            return _ec2_error(start_response, fault["code"], fault["message"], fault["status"])
        return self.app(environ, start_response)

    def control(self, environ, start_response, path):
        method = environ.get("REQUEST_METHOD", "GET")
        state = vmimport_ext.STATE
        if path == "/_vmimport/health":
            return _json(start_response, "200 OK", {"ok": True})
        if path == "/_vmimport/config":
            if method == "GET":
                return _json(start_response, "200 OK", state.snapshot())
            if method == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                raw = environ["wsgi.input"].read(length) if length else b"{}"
                try:
                    updates = json.loads(raw or b"{}")
                    return _json(start_response, "200 OK", state.configure(updates))
                except (ValueError, vmimport_ext.ConfigError) as exc:
                    return _json(start_response, "400 Bad Request", {"error": str(exc)})
        if path == "/_vmimport/counters":
            if method == "GET":
                return _json(start_response, "200 OK", state.counters())
            if method in ("DELETE", "POST"):
                state.reset_counters()
                return _json(start_response, "200 OK", state.counters())
        if path == "/_vmimport/reset" and method == "POST":
            moto_reset()
            state.reset()
            return _json(start_response, "200 OK", {"status": "ok", "config": state.snapshot()})
        return _json(start_response, "404 Not Found", {"error": f"no such control endpoint: {method} {path}"})


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", help="write {url, pid} here once listening")
    parser.add_argument(
        "--config", default="{}", help="JSON object of start settings (see vmimport_ext.DEFAULT_CONFIG)"
    )
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    if not args.verbose:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    vmimport_ext.STATE.set_initial(json.loads(args.config))
    vmimport_ext.install()

    from werkzeug.serving import make_server

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

    app = VmImportMiddleware(DomainDispatcherApplication(create_backend_app))
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"url": url, "pid": os.getpid()}, handle)
        os.replace(tmp, args.ready_file)
    print(f"moto + VM Import listening on {url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
