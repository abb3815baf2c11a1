"""vsphere_ova_export against the vSphere simulator and the moto S3 server, through real ansible-playbook runs.

Each test starts its own vcsim (state changes: power, media, faults) and uses the session moto server,
reset per test. The environment is what a user exports (VMWARE_*, AWS_*), so env fallbacks are exercised.
"""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest
from pyVmomi import vim, vmodl

from ansible_collections.esxi2ami.migrate.plugins.module_utils import ova, s3_stream, vsphere
from tests.integration.playbook import descendants, run_playbook
from tests.simulators.vcsim.launcher import TWO_DISK_VM, Vcsim, disk_vm

BUCKET = "exports"
MODULE = "esxi2ami.migrate.vsphere_ova_export"


def _vm(sim, name):
    si = sim.connect()
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(v for v in view.view if v.name == name)
    finally:
        view.Destroy()


def _cdrom(vm):
    return next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualCdrom))


def _env(sim, aws_server):
    env = dict(sim.env)
    env.update(aws_server.env)
    return env


def _export(name=TWO_DISK_VM, **args):
    return {"name": "export", MODULE: dict(name=name, **args), "ignore_errors": True}


def _result(res, task="export"):
    assert res.rc in (0, 2), res
    return res.task(task)


def _uploads(s3):
    return s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def _members_and_manifest(path):
    """Member names in order, and whether every manifest line matches the member's SHA-256."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        manifest = tar.extractfile(members[1]).read().decode()
        for line in manifest.splitlines():
            algo, rest = line.split("(", 1)
            name, digest = rest.split(")= ")
            assert algo == "SHA256"
            assert hashlib.sha256(tar.extractfile(name).read()).hexdigest() == digest, name
        return names, manifest, members


@pytest.fixture(scope="module")
def big_disk(tmp_path_factory):
    """A 24 MiB disk of incompressible data: its VMDK spans several 5 MiB parts."""
    path = tmp_path_factory.mktemp("disks") / "big.raw"
    path.write_bytes(os.urandom(24 << 20))
    return path


@pytest.fixture
def sim():
    with Vcsim() as server:
        yield server


@pytest.fixture
def s3(aws_clean):  # noqa: F811 - pytest fixture
    client = aws_clean.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def test_two_disk_vm_with_iso_to_file_and_s3(sim, aws_clean, s3, tmp_path):
    env = _env(sim, aws_clean)
    dest_file = str(tmp_path / "vm.ova")
    dest_s3 = "s3://%s/ova/vm.ova" % BUCKET
    progress = str(tmp_path / "progress.json")

    # Check mode: predicts power off and ejecting the ISO, touches nothing.
    res = run_playbook([_export(dest=dest_s3)], env=env, check=True, diff=True)
    predicted = _result(res)
    assert not predicted.get("failed"), predicted
    assert predicted["changed"] is True
    assert predicted["power"]["action"] == "shutdown"
    assert [m["backing"] for m in predicted["media"]] == ["[LocalDS_0] iso/tools.iso"]
    assert predicted["size"] == (8 + 4) << 20
    assert predicted["diff"]["before"]["power_state"] == "poweredOn"
    vm = _vm(sim, TWO_DISK_VM)
    assert vm.runtime.powerState == "poweredOn"
    assert _cdrom(vm).connectable.connected is True
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0

    # To a file: graceful shutdown, ISO ejected, progress recorded.
    res = run_playbook([_export(dest=dest_file, progress_file=progress)], env=env)
    to_file = _result(res)
    assert not to_file.get("failed"), to_file
    assert to_file["changed"] is True
    assert to_file["power"]["action"] == "shutdown"
    assert [m["label"] for m in to_file["media"]] == ["CD/DVD drive 1"]
    vm = _vm(sim, TWO_DISK_VM)
    assert vm.runtime.powerState == "poweredOff"
    cd = _cdrom(vm)
    assert not cd.connectable.connected and not cd.connectable.startConnected
    assert not isinstance(cd.backing, vim.vm.device.VirtualCdrom.IsoBackingInfo)
    done = json.loads(open(progress).read())
    assert done["phase"] == "done" and done["bytes"] == to_file["size"]

    # To S3: one pass, encrypted, with the VM's identity as metadata; nothing left half done.
    res = run_playbook([_export(dest=dest_s3)], env=env)
    to_s3 = _result(res)
    assert not to_s3.get("failed"), to_s3
    assert to_s3["changed"] is True and to_s3["power"]["action"] == "none" and to_s3["media"] == []
    head = s3.head_object(Bucket=BUCKET, Key="ova/vm.ova")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["esxi2ami-vm-uuid"] == to_s3["vm"]["uuid"]
    assert head["ContentLength"] == to_s3["size"] == to_file["size"]
    assert to_s3["s3"]["etag"] == head["ETag"]
    assert _uploads(s3) == []

    # The S3 object and the file are the same bytes.
    body = s3.get_object(Bucket=BUCKET, Key="ova/vm.ova")["Body"].read()
    local = open(dest_file, "rb").read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(local).hexdigest()
    assert to_s3["disks"] == to_file["disks"]

    # A real tar: descriptor first, manifest next, disks; the manifest matches; disks are stream-optimized.
    names, manifest, members = _members_and_manifest(dest_file)
    assert names == ["vm-two-disks.ovf", "vm-two-disks.mf", "vm-two-disks-disk1.vmdk", "vm-two-disks-disk2.vmdk"]
    assert all(m.type == tarfile.REGTYPE for m in members)
    assert [d["name"] for d in to_file["disks"]] == names[2:]
    assert [d["capacity"] for d in to_file["disks"]] == [8 << 20, 4 << 20]
    with tarfile.open(dest_file) as tar:
        descriptor = tar.extractfile(names[0]).read().decode()
        assert "iso" not in descriptor.lower()
        for disk in to_file["disks"]:
            assert 'ovf:href="%s"' % disk["name"] in descriptor
            assert 'ovf:size="%d"' % disk["size"] in descriptor
            out = tmp_path / disk["name"]
            out.write_bytes(tar.extractfile(disk["name"]).read())
            assert hashlib.sha256(out.read_bytes()).hexdigest() == disk["sha256"]
            info = json.loads(
                subprocess.run(
                    ["qemu-img", "info", "--output", "json", str(out)], capture_output=True, text=True, check=True
                ).stdout
            )
            assert info["format"] == "vmdk"
            assert info["format-specific"]["data"]["create-type"] == "streamOptimized"

    # Re-runs: unchanged with overwrite=different, refused with never, exported again with always.
    res = run_playbook(
        [
            _export(dest=dest_file),
            {"name": "s3 again", MODULE: dict(name=TWO_DISK_VM, dest=dest_s3), "ignore_errors": True},
            {"name": "never", MODULE: dict(name=TWO_DISK_VM, dest=dest_s3, overwrite="never"), "ignore_errors": True},
        ],
        env=env,
    )
    assert res.task("export")["changed"] is False, res.task("export")
    assert res.task("s3 again")["changed"] is False, res.task("s3 again")
    assert res.task("s3 again")["s3"]["etag"] == head["ETag"]
    never = res.task("never")
    assert never["failed"] and "already exists and overwrite is never" in never["msg"]
    res = run_playbook([_export(dest=dest_s3, overwrite="always")], env=env)
    again = _result(res)
    assert again["changed"] is True and not again.get("failed"), again
    assert again["disks"] == to_s3["disks"]
    assert _uploads(s3) == []


def test_check_mode_on_a_powered_off_vm_changes_nothing(sim, aws_clean, s3, tmp_path):
    env = _env(sim, aws_clean)
    dest = tmp_path / "vm.ova"
    res = run_playbook([_export(name="DC0_H0_VM1", dest=str(dest), power_off="hard")], env=env, check=True)
    out = _result(res)
    assert out["changed"] is True and out["power"]["action"] == "poweroff"
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    assert _vm(sim, "DC0_H0_VM1").runtime.powerState == "poweredOn"


def test_keepalive_outlasts_the_lease_timeout(aws_clean, s3, tmp_path):
    # Each disk downloads for several lease timeouts: only a working keep-alive gets the export through.
    with Vcsim(lease_timeout=2, rate_limit=64 << 10) as sim:
        res = run_playbook([_export(dest="s3://%s/slow.ova" % BUCKET, power_off="hard")], env=_env(sim, aws_clean))
        out = _result(res)
        assert not out.get("failed"), out
        total = sum(d["size"] for d in out["disks"])
        assert total > 4 * 2 * (64 << 10)  # the transfer took well over the lease timeout
        assert s3.head_object(Bucket=BUCKET, Key="slow.ova")["ContentLength"] == out["size"]
        assert _uploads(s3) == []


def test_connection_cut_mid_disk_leaves_nothing(aws_clean, s3, tmp_path, big_disk):
    config = {"vms": [disk_vm("big", big_disk, power="poweredOn")]}
    with Vcsim(config=config, cut_after=17 << 20) as sim:
        env = _env(sim, aws_clean)
        res = run_playbook(
            [
                _export(
                    name="big", dest="s3://%s/cut.ova" % BUCKET, power_off="hard", part_size=5, restore_power_state=True
                )
            ],
            env=env,
        )
        out = _result(res)
        assert out["failed"]
        assert "download of" in out["msg"] and "failed after" in out["msg"], out["msg"]
        assert "the VM was left poweredOn" in out["msg"], out["msg"]
        assert _uploads(s3) == []
        assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
        assert _vm(sim, "big").runtime.powerState == "poweredOn"

        local = tmp_path / "cut.ova"
        res = run_playbook([_export(name="big", dest=str(local), power_off="hard")], env=env)
        out = _result(res)
        assert out["failed"] and "failed after" in out["msg"]
        assert list(tmp_path.iterdir()) == []


def test_cut_aborts_the_lease_and_the_multipart_upload(aws_clean, s3, big_disk):
    """The same failure one level down, where the lease and the parts can be looked at afterwards."""
    with Vcsim(config={"vms": [disk_vm("big", big_disk)]}, cut_after=17 << 20) as sim:
        client = vsphere.VSphereClient(sim.host, sim.user, sim.password, port=sim.port, validate_certs=False)
        vm = client.find_vm(name="big")
        client.power_off(vm, "hard")
        leases = []
        opened = client.open_export_lease

        def keep(vm_):
            lease = opened(vm_)
            leases.append(lease)
            return lease

        client.open_export_lease = keep
        sinks = []

        def make_sink(head_size, estimate):
            sink = s3_stream.MultipartSink(s3, BUCKET, "cut.ova", 5 << 20, max_concurrency=2).start()
            sinks.append(sink)
            return sink

        with pytest.raises(vsphere.VSphereError, match="failed after"):
            vsphere.export_ova(client, vm, make_sink)
        assert leases[0].state == "aborted"
        with pytest.raises(vmodl.fault.ManagedObjectNotFound):
            leases[0].lease.state  # noqa: B018 - vcsim drops an aborted lease
        assert sinks[0].upload_id and sinks[0].bytes_uploaded >= 10 << 20  # parts 2 and 3 went up before the cut
        assert _uploads(s3) == []
        client.close()


def test_power_off_modes(aws_clean, tmp_path):
    with Vcsim(shutdown_delay=30) as sim:
        env = _env(sim, aws_clean)
        res = run_playbook(
            [
                {
                    "name": "never",
                    MODULE: dict(name="DC0_H0_VM0", dest=str(tmp_path / "a.ova"), power_off="never"),
                    "ignore_errors": True,
                },
                {
                    "name": "graceful times out",
                    MODULE: dict(
                        name="DC0_H0_VM0",
                        dest=str(tmp_path / "a.ova"),
                        power_off="graceful",
                        shutdown_timeout=1,
                        restore_power_state=True,
                    ),
                },
                {"name": "hard", MODULE: dict(name="DC0_H0_VM1", dest=str(tmp_path / "b.ova"), power_off="hard")},
            ],
            env=env,
        )
        never = res.task("never")
        assert never["failed"] and "power_off is never" in never["msg"]
        slow = res.task("graceful times out")
        assert not slow.get("failed"), slow
        assert slow["power"]["action"] == "shutdown_then_poweroff"
        assert "did not shut down within 1s" in slow["power"]["note"]
        assert slow["power"]["restored"] is True
        assert _vm(sim, "DC0_H0_VM0").runtime.powerState == "poweredOn"
        hard = res.task("hard")
        assert hard["power"]["action"] == "poweroff" and hard["power"]["after"] == "poweredOff"
        assert _vm(sim, "DC0_H0_VM1").runtime.powerState == "poweredOff"


def test_ambiguous_and_missing_names(aws_clean, tmp_path):
    config = {"vms": [{"name": "twin", "folder": "a"}, {"name": "twin", "folder": "b"}]}
    with Vcsim(config=config) as sim:
        res = run_playbook(
            [
                _export(name="twin", dest=str(tmp_path / "t.ova")),
                {"name": "missing", MODULE: dict(name="nope", dest=str(tmp_path / "n.ova")), "ignore_errors": True},
                {"name": "in folder", MODULE: dict(name="twin", folder="b", dest=str(tmp_path / "t.ova"))},
            ],
            env=_env(sim, aws_clean),
            check=True,
        )
        twin = res.task("export")
        assert twin["failed"]
        assert "2 VMs are named 'twin'" in twin["msg"] and "/DC0/vm/a/twin" in twin["msg"]
        assert "/DC0/vm/b/twin" in twin["msg"]
        missing = res.task("missing")
        assert missing["failed"] and "no VM named 'nope'" in missing["msg"]
        assert res.task("in folder")["changed"] is True


def test_bad_dest_is_named(aws_clean, tmp_path, sim):
    res = run_playbook(
        [
            _export(dest="s3://only-bucket"),
            {
                "name": "no dir",
                MODULE: dict(name=TWO_DISK_VM, dest=str(tmp_path / "x" / "y.ova")),
                "ignore_errors": True,
            },
            {"name": "no bucket", MODULE: dict(name=TWO_DISK_VM, dest="s3://nope/y.ova"), "ignore_errors": True},
        ],
        env=_env(sim, aws_clean),
    )
    assert "must look like s3://bucket/key.ova" in res.task("export")["msg"]
    assert "does not exist" in res.task("no dir")["msg"]
    assert "bucket 'nope' does not exist: create it first" in res.task("no bucket")["msg"]
    # All found out before the VM was touched.
    assert _vm(sim, TWO_DISK_VM).runtime.powerState == "poweredOn"


def test_ova_reader_reads_the_export(tmp_path):
    """The module_utils reader agrees with tarfile on an exported OVA."""
    with Vcsim() as sim:
        client = vsphere.VSphereClient(sim.host, sim.user, sim.password, port=sim.port, validate_certs=False)
        vm = client.find_vm(name=TWO_DISK_VM)
        client.power_off(vm, "hard")
        client.eject_media(vm)
        path = str(tmp_path / "r.ova")
        res = vsphere.export_ova(client, vm, lambda head, est: ova.FileSink(path, head))
        client.close()
    read, size = ova.file_reader(path)
    facts = ova.inspect_ova(read, size, verify_manifest=True)
    assert facts["problems"] == []
    with tarfile.open(path) as tar:
        assert [(m.name, m.size) for m in tar.getmembers()] == [(m["name"], m["size"]) for m in facts["members"]]
    assert res["size"] == size


def test_tls_verification_is_on_by_default(aws_clean, sim, tmp_path):
    env = _env(sim, aws_clean)
    del env["VMWARE_VALIDATE_CERTS"]
    res = run_playbook([_export(dest=str(tmp_path / "v.ova"))], env=env)
    out = _result(res)
    assert out["failed"] and "TLS verification of 127.0.0.1:%d failed" % sim.port in out["msg"], out["msg"]
    assert _vm(sim, TWO_DISK_VM).runtime.powerState == "poweredOn"


def test_verified_tls_end_to_end_with_a_trusted_ca(aws_clean, tmp_path):
    """validate_certs on (the default), the server's CA trusted the standard way (SSL_CERT_FILE): the API and
    every disk download are verified and the export works; the same server without the CA is refused."""
    with Vcsim(trusted_tls=True) as sim:
        env = _env(sim, aws_clean)
        del env["VMWARE_VALIDATE_CERTS"]
        refused = _result(run_playbook([_export(dest=str(tmp_path / "refused.ova"))], env=env))
        assert refused["failed"] and "TLS verification of 127.0.0.1:%d failed" % sim.port in refused["msg"]
        assert _vm(sim, TWO_DISK_VM).runtime.powerState == "poweredOn"
        env["SSL_CERT_FILE"] = str(sim.ca_file)
        out = _result(run_playbook([_export(dest=str(tmp_path / "verified.ova"), power_off="hard")], env=env))
        assert not out.get("failed"), out
        names = _members_and_manifest(tmp_path / "verified.ova")[0]
        assert names[0].endswith(".ovf") and len([n for n in names if n.endswith(".vmdk")]) == 2


def test_sigterm_mid_upload_aborts_it(aws_clean, s3, tmp_path, big_disk):
    """An AWX job cancel sends SIGTERM: the module gives the lease back and aborts the multipart upload."""
    import signal  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    config = {"vms": [disk_vm("big", big_disk)]}
    with Vcsim(config=config, rate_limit=2 << 20) as sim:
        book = tmp_path / "play.yml"
        task = _export(name="big", dest="s3://%s/term.ova" % BUCKET, part_size=5)
        book.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [task]}]))
        env = dict(os.environ, **_env(sim, aws_clean))
        env["ANSIBLE_PYTHON_INTERPRETER"] = sys.executable
        proc = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                "-i",
                "localhost,",
                "-c",
                "local",
                str(book),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            module_pid = None
            for _i in range(600):
                uploads = _uploads(s3)
                if uploads and s3.list_parts(Bucket=BUCKET, Key="term.ova", UploadId=uploads[0]["UploadId"]).get(
                    "Parts"
                ):
                    for pid in descendants(proc.pid):
                        with open("/proc/%d/cmdline" % pid, "rb") as f:
                            argv = f.read().split(b"\0")
                        # The module's Python process itself, not the shell ansible wraps it in.
                        if b"python" in argv[0] and any(b"AnsiballZ_vsphere_ova_export" in a for a in argv):
                            module_pid = pid
                    break
                time.sleep(0.1)
            assert module_pid, "the export never got a part uploaded"
            os.kill(module_pid, signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert _uploads(s3) == []
        assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_a_changed_vm_is_exported_again(aws_clean, s3, sim, tmp_path):
    env = _env(sim, aws_clean)
    dest = "s3://%s/changes.ova" % BUCKET
    first = _result(run_playbook([_export(dest=dest, power_off="hard")], env=env))
    assert first["changed"] and not first.get("failed"), first
    vm = _vm(sim, TWO_DISK_VM)
    task = vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="changed after the export"))
    while task.info.state not in ("success", "error"):
        time.sleep(0.1)
    assert task.info.state == "success"
    again = _result(run_playbook([_export(dest=dest, power_off="hard")], env=env))
    assert again["changed"] is True and not again.get("failed"), again
    assert again["vm"]["change_version"] != first["vm"]["change_version"]
    head = s3.head_object(Bucket=BUCKET, Key="changes.ova")
    assert head["Metadata"]["esxi2ami-vm-change-version"] == again["vm"]["change_version"]
