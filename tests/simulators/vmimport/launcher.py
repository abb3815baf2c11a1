"""Start and control a moto server with the VM Import extension (plain Python, no pytest).

    from tests.simulators.vmimport.launcher import MotoVmImport

    with MotoVmImport(task_duration=6.0, max_active_tasks=5) as aws:
        ec2 = boto3.client("ec2", endpoint_url=aws.url, region_name="us-east-1", ...)
        subprocess.run([...], env={**os.environ, **aws.env})
        aws.configure(throttle={"DescribeImportImageTasks": {"next": 2}})
        aws.counters()["calls"]["DescribeImportImageTasks"]
        aws.reset()

By hand:  python -m tests.simulators.vmimport.launcher [--task-duration 6] [--config JSON]
prints the ``export`` lines for a shell and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "server.py")
REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


class MotoVmImportError(RuntimeError):
    pass


class MotoVmImport:
    """A moto server subprocess (own process group) with ImportImage & friends.

    Keyword arguments are the simulator's settings (see ``DEFAULT_CONFIG`` in
    vmimport_ext.py): ``task_duration``, ``deleting_duration``, ``max_active_tasks``,
    ``iam_propagation_delay``, ``throttle``, ``errors``. They are the start values that
    :meth:`reset` goes back to; :meth:`configure` changes them at runtime.
    """

    def __init__(
        self,
        task_duration: float = 6.0,
        *,
        python: str | None = None,
        verbose: bool = False,
        log_path: str | None = None,
        **faults: Any,
    ):
        self.settings: dict[str, Any] = {"task_duration": task_duration, **faults}
        self.python = python or sys.executable
        self.verbose = verbose
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self.log_path: str | None = log_path  # server output; a temp file (removed on stop) unless given

    # lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> MotoVmImport:
        if self.proc is not None:
            return self
        self._tmpdir = tempfile.TemporaryDirectory(prefix="moto-vmimport-")
        ready = os.path.join(self._tmpdir.name, "ready.json")
        if self.log_path is None:
            self.log_path = os.path.join(self._tmpdir.name, "server.log")
        cmd = [
            self.python,
            SERVER,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ready-file",
            ready,
            "--config",
            json.dumps(self.settings),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.verbose:
            cmd.append("--verbose")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION})
        env.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=HERE,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(ready):
                with open(ready, encoding="utf-8") as handle:
                    self.url = json.load(handle)["url"]
                break
            if self.proc.poll() is not None:
                log_text = self._log_tail()
                self._cleanup()
                raise MotoVmImportError(f"moto VM Import server exited early ({self.proc.returncode}):\n{log_text}")
            time.sleep(0.05)
        else:
            log_text = self._log_tail()
            self.stop()
            raise MotoVmImportError(f"moto VM Import server did not start within {timeout} s:\n{log_text}")
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            with open(self.log_path or "", encoding="utf-8", errors="replace") as handle:
                return handle.read()[-limit:]
        except OSError:
            return ""

    def __enter__(self) -> MotoVmImport:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; tests call stop()
        try:
            self.stop()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown
            pass

    # environment ---------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The variables a user would export to point boto3 / amazon.aws / the AWS CLI here."""
        self._require()
        return {
            "AWS_URL": self.url,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def client(self, service: str, region: str = REGION, **kwargs: Any) -> Any:
        """A boto3 client for this server (convenience for tests)."""
        import boto3

        self._require()
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            **kwargs,
        )

    # control API --------------------------------------------------------------------
    def _require(self) -> None:
        if self.url is None or self.proc is None:
            raise MotoVmImportError("the server is not running; call start() first")

    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        self._require()
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise MotoVmImportError(f"{method} {path} failed ({exc.code}): {detail}") from None

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings/faults at runtime; returns the full configuration."""
        return self._request("POST", "/_vmimport/config", settings)

    def config(self) -> dict[str, Any]:
        return self._request("GET", "/_vmimport/config")

    def counters(self) -> dict[str, dict[str, int]]:
        """{"calls": {action: n}, "throttled": {...}, "injected": {...}}; EC2 actions bare, others "service:Action"."""
        return self._request("GET", "/_vmimport/counters")

    def reset_counters(self) -> None:
        self._request("DELETE", "/_vmimport/counters")

    def reset(self) -> None:
        """moto's /moto-api/reset (all AWS state) + settings back to start values + counters zeroed."""
        self._request("POST", "/_vmimport/reset")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="moto server with the VM Import extension on 127.0.0.1")
    parser.add_argument("--task-duration", type=float, default=6.0, help="seconds from ImportImage to completed")
    parser.add_argument("--config", default="{}", help="more settings as JSON, e.g. '{\"max_active_tasks\": 2}'")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    settings = json.loads(args.config)
    sim = MotoVmImport(task_duration=args.task_duration, verbose=args.verbose, **settings)

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    sim.start()
    try:
        for key, value in sim.env.items():
            print(f"export {key}={value}")
        print(f"# control: curl {sim.url}/_vmimport/config ; log: {sim.log_path}", flush=True)
        while sim.proc is not None and sim.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
