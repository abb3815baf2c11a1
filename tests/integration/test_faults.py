"""Faults during an export, each through a real ansible-playbook run against vcsim and the moto S3 server.

Every test checks that nothing is lost or left behind: no multipart upload in ListMultipartUploads, no object
or partial file, the export lease released (the VM can be powered on again), the VM in the power state asked
for, and a message that names what failed and the state left. docs/faults.md lists every fault and its test.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import boto3
import pytest
import yaml
from pyVmomi import vim

from tests.integration.playbook import descendants, run_playbook
from tests.simulators.vcsim.launcher import Vcsim, disk_vm

BUCKET = "faults"
MODULE = "esxi2ami.migrate.vsphere_ova_export"
VM = "faulty"


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """16 MiB of incompressible data: its VMDK spans part 1 (5 MiB held back) and two more 5 MiB parts."""
    path = tmp_path_factory.mktemp("fault-disks") / "disk.raw"
    path.write_bytes(os.urandom(16 << 20))
    return path


@pytest.fixture
def s3(aws_clean):
    client = aws_clean.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def _sim(disk, **faults):
    return Vcsim(config={"vms": [disk_vm(VM, disk, power="poweredOn")]}, defaults=False, **faults)


def _env(sim, aws):
    env = dict(sim.env)
    env.update(aws.env)
    return env


def _export(key=None, dest=None, **args):
    args.setdefault("power_off", "hard")
    args.setdefault("part_size", 5)
    task = dict(name=VM, dest=dest or "s3://%s/%s" % (BUCKET, key), **args)
    return {"name": "export", MODULE: task, "ignore_errors": True}


def _result(res):
    assert res.rc in (0, 2), res
    return res.task("export")


def _uploads(s3):
    return s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def _objects(s3):
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def _vm(si):
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(v for v in view.view if v.name == VM)
    finally:
        view.Destroy()


def _wait_task(task):
    while task.info.state not in ("success", "error"):
        time.sleep(0.05)
    return task.info


def _power_on(sim, wait=0.0):
    """Power the VM on: possible only when no export lease is open. Returns the last error, None on success.

    ``wait`` > 0 retries that long, for a lease that vSphere releases only when its timeout runs out.
    """
    si = sim.connect()
    vm = _vm(si)
    deadline = time.monotonic() + wait
    while True:
        info = _wait_task(vm.PowerOnVM_Task())
        if info.state == "success":
            return None
        if time.monotonic() >= deadline:
            return info.error.msg or type(info.error).__name__
        time.sleep(0.25)


def _upload_with_parts(s3, key, timeout=120):
    """Wait until the export to ``key`` has a part in S3; its upload id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for upload in _uploads(s3):
            if upload["Key"] == key and s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"]).get("Parts"):
                return upload["UploadId"]
        time.sleep(0.05)
    raise AssertionError("the export to %s never got a part uploaded" % key)


class Background(threading.Thread):
    """run_playbook in a thread, so the test can inject a fault while the export runs."""

    def __init__(self, tasks, env):
        super().__init__(daemon=True)
        self.tasks, self.env, self.res, self.exc = tasks, env, None, None
        self.start()

    def run(self):
        try:
            self.res = run_playbook(self.tasks, env=self.env)
        except Exception as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.exc = exc

    def result(self, timeout=300):
        self.join(timeout)
        assert not self.is_alive(), "the export did not end"
        if self.exc is not None:
            raise self.exc
        return _result(self.res)


def _module_pid(parent):
    for pid in descendants(parent):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"python" in argv[0] and any(b"AnsiballZ_vsphere_ova_export" in a for a in argv):
            return pid
    return None


def _kill_mid_export(sim, aws, task, tmp_path, started):
    """Run ``task`` in ansible-playbook and SIGKILL the module's process once ``started()`` is true."""
    env = dict(os.environ, **_env(sim, aws), ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    book = tmp_path / "play.yml"
    book.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [task]}]))
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    proc = subprocess.Popen(
        [playbook, "-i", "localhost,", "-c", "local", str(book)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not started():
            assert time.monotonic() < deadline and proc.poll() is None, "the export never got going"
            time.sleep(0.05)
        pid = _module_pid(proc.pid)
        assert pid, "no module process found"
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    book.unlink()


def test_sigkill_mid_upload_then_rerun_aborts_the_stale_upload(aws_clean, s3, disk, tmp_path):
    """SIGKILL cannot be caught: the killed run leaves its multipart upload; the next run finds it and aborts it."""
    with _sim(disk, rate_limit=4 << 20, lease_timeout=2) as sim:
        found = []

        def started():
            found[:] = [u["UploadId"] for u in _uploads(s3)]
            return found and s3.list_parts(Bucket=BUCKET, Key="kill.ova", UploadId=found[0]).get("Parts")

        _kill_mid_export(sim, aws_clean, _export("kill.ova"), tmp_path, started)
        stale = found[0]
        # What a kill leaves: the upload and its parts, no object.
        assert [u["UploadId"] for u in _uploads(s3)] == [stale]
        assert _objects(s3) == []
        # vSphere side: with no keep-alive any more the lease times out and the VM can be powered on again.
        assert _power_on(sim, wait=60) is None
        sim.set_faults(rate_limit=None)

        env = _env(sim, aws_clean)
        check = _result(run_playbook([_export("kill.ova")], env=env, check=True))
        assert not check.get("failed"), check
        assert [u["upload_id"] for u in check["aborted_stale_uploads"]] == [stale]
        assert "would abort 1 stale multipart upload" in check["msg"], check["msg"]
        assert [u["UploadId"] for u in _uploads(s3)] == [stale]  # check mode only reports it

        rerun = _result(run_playbook([_export("kill.ova")], env=env))
        assert not rerun.get("failed"), rerun
        assert [u["upload_id"] for u in rerun["aborted_stale_uploads"]] == [stale]
        assert "aborted 1 stale multipart upload" in rerun["msg"], rerun["msg"]
        assert _uploads(s3) == []  # no upload older than the run, and its own completed
        assert s3.head_object(Bucket=BUCKET, Key="kill.ova")["ContentLength"] == rerun["size"]

        # Uploads for other keys (even ones that start with ours) are none of its business.
        other = s3.create_multipart_upload(Bucket=BUCKET, Key="kill.ova.other")["UploadId"]
        again = _result(run_playbook([_export("kill.ova")], env=env))
        assert again["changed"] is False and again["aborted_stale_uploads"] == [], again
        assert [u["UploadId"] for u in _uploads(s3)] == [other]


def test_sigkill_mid_local_export_then_rerun_removes_the_partial_file(aws_clean, disk, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "kill.ova"
    partial = out_dir / "kill.ova.partial"
    with _sim(disk, rate_limit=4 << 20, lease_timeout=2) as sim:
        _kill_mid_export(
            sim,
            aws_clean,
            _export(dest=str(dest)),
            tmp_path,
            lambda: partial.exists() and partial.stat().st_blocks * 512 > 4 << 20,
        )
        assert sorted(p.name for p in out_dir.iterdir()) == ["kill.ova.partial"]  # what a kill leaves
        assert _power_on(sim, wait=60) is None
        sim.set_faults(rate_limit=None)

        env = _env(sim, aws_clean)
        check = _result(run_playbook([_export(dest=str(dest))], env=env, check=True))
        assert check["removed_partial_file"] == str(partial) and "would remove" in check["msg"], check
        assert partial.exists()
        rerun = _result(run_playbook([_export(dest=str(dest))], env=env))
        assert not rerun.get("failed"), rerun
        assert rerun["removed_partial_file"] == str(partial)
        assert sorted(p.name for p in out_dir.iterdir()) == ["kill.ova"]
        assert dest.stat().st_size == rerun["size"]

        # A partial file next to a finished export is removed by a run that has nothing else to do.
        partial.write_bytes(b"left over")
        again = _result(run_playbook([_export(dest=str(dest))], env=env))
        assert again["changed"] is True and again["removed_partial_file"] == str(partial), again
        assert "already holds VM" in again["msg"]
        assert sorted(p.name for p in out_dir.iterdir()) == ["kill.ova"]


def test_vcenter_session_ended_mid_export(aws_clean, s3, disk):
    """An administrator terminates the module's session while a disk downloads (as an expiry would end it)."""
    with _sim(disk, rate_limit=2 << 20, lease_timeout=2) as sim:
        admin = sim.connect()
        sessions = admin.content.sessionManager
        before = {s.key for s in sessions.sessionList}
        run = Background([_export("session.ova")], _env(sim, aws_clean))
        _upload_with_parts(s3, "session.ova")
        theirs = [s.key for s in sessions.sessionList if s.key not in before]
        assert len(theirs) == 1, theirs
        sessions.TerminateSession(sessionId=theirs)
        out = run.result()
        assert out["failed"]
        assert "the vCenter session of this export ended" in out["msg"], out["msg"]
        assert "Nothing was left behind at the destination" in out["msg"], out["msg"]
        assert "the export lease was not given back (the session that owns it ended)" in out["msg"], out["msg"]
        assert "the VM was left poweredOff" in out["msg"], out["msg"]
        assert out["vm_power_state"] == "poweredOff"
        assert _uploads(s3) == []
        assert _objects(s3) == []
        # The lease belongs to the dead session: vSphere releases it when its timeout runs out.
        assert _power_on(sim, wait=60) is None


def test_s3_throttling_is_retried_and_the_ova_is_the_same(aws_clean, s3, disk):
    """Transient S3 failures (503 SlowDown on UploadPart) are retried; the object equals a clean export's."""
    with _sim(disk) as sim:
        env = _env(sim, aws_clean)
        clean = _result(run_playbook([_export("clean.ova")], env=env))
        assert not clean.get("failed"), clean
        aws_clean.reset_counters()
        aws_clean.configure(throttle={"s3:PUT": {"next": 6}})
        out = _result(run_playbook([_export("throttled.ova")], env=env))
        assert not out.get("failed"), out
        assert aws_clean.counters()["throttled"].get("s3:PUT") == 6
        assert out["s3"]["parts"] == clean["s3"]["parts"] >= 3
        bodies = [s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in ("clean.ova", "throttled.ova")]
        assert hashlib.sha256(bodies[0]).hexdigest() == hashlib.sha256(bodies[1]).hexdigest()
        assert out["disks"] == clean["disks"]
        assert _uploads(s3) == []
        assert _power_on(sim) is None  # both leases completed


def _user(iam, name, statements):
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name,
        PolicyName="s3",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_s3_permanent_failure_aborts_upload_and_lease(aws_factory, disk):
    """The credentials lose s3:PutObject mid-way (an administrator adds an explicit Deny): UploadPart gets
    AccessDenied, which no retry can fix. The export fails with S3's message, aborts its multipart upload
    (s3:AbortMultipartUpload is still allowed) and gives the lease back; the VM is powered on again as asked."""
    aws = aws_factory()  # its own server: IAM authorization is switched on below
    iam = aws.client("iam")
    admin_id, admin_secret = _user(iam, "admin", [{"Effect": "Allow", "Action": "*", "Resource": "*"}])
    exporter_id, exporter_secret = _user(iam, "exporter", [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}])
    aws.client("s3").create_bucket(Bucket=BUCKET)
    reset = urllib.request.Request(aws.url + "/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(reset).close()  # from now on every request is authorized against IAM

    def client(service):
        return boto3.client(
            service,
            endpoint_url=aws.url,
            region_name="us-east-1",
            aws_access_key_id=admin_id,
            aws_secret_access_key=admin_secret,
        )

    s3, admin_iam = client("s3"), client("iam")
    with _sim(disk, rate_limit=2 << 20) as sim:
        env = _env(sim, aws)
        env.update(AWS_ACCESS_KEY_ID=exporter_id, AWS_SECRET_ACCESS_KEY=exporter_secret)
        run = Background([_export("denied.ova", restore_power_state=True)], env)
        _upload_with_parts(s3, "denied.ova")
        admin_iam.put_user_policy(
            UserName="exporter",
            PolicyName="deny-put",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*"}],
                }
            ),
        )
        out = run.result()
        assert out["failed"]
        assert "AccessDenied" in out["msg"], out["msg"]
        # Not retried: it cannot get better. (On a very slow machine every part may be up before the Deny lands;
        # then CompleteMultipartUpload, also s3:PutObject, is what gets denied.)
        assert "failed after 1 attempt(s)" in out["msg"] or "completing the multipart upload" in out["msg"], out["msg"]
        assert "Nothing was left behind at the destination" in out["msg"], out["msg"]
        assert "the export lease was given back" in out["msg"], out["msg"]
        assert "the VM was left poweredOn" in out["msg"], out["msg"]  # restore_power_state: as asked
        assert _uploads(s3) == []
        assert _objects(s3) == []
        assert _vm(sim.connect()).runtime.powerState == "poweredOn"


@pytest.mark.parametrize("where", ["s3", "file"])
def test_lease_that_cannot_be_kept_alive_fails_cleanly(aws_clean, s3, disk, tmp_path, where):
    """A lease timeout shorter than the keep-alive can honour (its interval is at least 0.5 s): vSphere ends the
    lease mid-export, the failure names the lease, and nothing is left behind."""
    with _sim(disk, rate_limit=4 << 20, lease_timeout=0.3) as sim:
        dest = str(tmp_path / "lease.ova") if where == "file" else None
        out = _result(run_playbook([_export("lease.ova", dest=dest)], env=_env(sim, aws_clean)))
        assert out["failed"]
        assert "lease" in out["msg"] and "timed out" in out["msg"], out["msg"]
        # Mid-export, as a rule; on a very slow machine the lease can time out before it was ever used.
        assert "the export lease was already ended by vSphere" in out["msg"] or "the export lease failed" in out["msg"]
        assert "the VM was left poweredOff" in out["msg"], out["msg"]
        assert _uploads(s3) == []
        assert _objects(s3) == []
        assert list(tmp_path.iterdir()) == []
        assert _power_on(sim) is None  # the lease is over: no wait needed
