"""`make demo`: migrate a VM from a simulated vCenter to a simulated AWS with playbooks/migrate.yml.

The simulators (vcsim with export leases, moto with VM Import) run on 127.0.0.1; the playbook runs exactly
as a user would run it against real endpoints: only the environment variables (endpoints, credentials)
differ. `--fast` skips the guest and exports a small disk.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.simulators.vcsim.launcher import Vcsim, disk_vm
from tests.simulators.vmimport.launcher import MotoVmImport

REPO = Path(__file__).resolve().parents[1]
BUCKET = "esxi2ami-demo"
GUEST_DISK_GIB = 3


def small_disk(path, size_mib=64):
    """A small MBR disk with a Linux partition: enough for the fast path through export and import."""
    with open(path, "wb") as disk:
        disk.truncate(size_mib << 20)
    subprocess.run(
        ["sfdisk", "-q", str(path)], input="label: dos\nstart=2048, type=83, bootable\n", text=True, check=True
    )
    return path


def run_playbook(workdir, inventory, extra_vars, env):
    vars_file = Path(workdir, "demo-vars.yml")
    vars_file.write_text(yaml.safe_dump(extra_vars))
    cmd = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(inventory),
        str(REPO / "playbooks" / "migrate.yml"),
        "-e",
        "@%s" % vars_file,
    ]
    print("\n$ " + " ".join(cmd) + "\n", flush=True)
    return subprocess.run(cmd, env=env, cwd=workdir, check=False).returncode


def show_result(aws, started):
    ec2 = aws.client("ec2")
    images = ec2.describe_images(Owners=["self"])["Images"]
    print("\n=== result ===")
    for image in images:
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        print(
            "AMI %s  name=%s  boot=%s  arch=%s"
            % (image["ImageId"], image.get("Name"), image.get("BootMode", "-"), image.get("Architecture"))
        )
        print("  tags: %s" % json.dumps(tags, sort_keys=True))
        for bdm in image.get("BlockDeviceMappings", []):
            snap_id = bdm.get("Ebs", {}).get("SnapshotId")
            if snap_id:
                snap = ec2.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"][0]
                snap_tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
                print("  %s %s tags: %s" % (bdm["DeviceName"], snap_id, json.dumps(snap_tags, sort_keys=True)))
    print("total demo time: %.1fs" % (time.monotonic() - started))
    return images


def _process_gone(pid):
    """True once pid has exited (a zombie counts as gone: the demo process reaps it later)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def power_off_hook(state_file):
    """vcsim's on_power_off for the demo VM: the guest shuts down, and its disk becomes what it now holds.

    Stops the guest container (an orderly poweroff), builds the disk from its root filesystem and puts
    the stream-optimized VMDK where vcsim serves the VM's disk from.
    """
    from tests.fixtures.guest import guest as fixture

    state = json.loads(Path(state_file).read_text())
    pid = state["pid"]
    if not _process_gone(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 90
        while not _process_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not _process_gone(pid):
            os.killpg(pid, signal.SIGKILL)
    out = Path(state["out_dir"])
    raw, vmdk = fixture.build_disk(state["rootfs"], out, name="guest", size_gib=state["size_gib"])
    os.replace(vmdk, state["vmdk"])
    raw.unlink()
    return 0


def prepare_guest(workdir):
    """The Debian guest in its "before" state, running (nspawn), and the VM config that serves its disk."""
    from tests.fixtures.guest import guest as fixture

    cache = fixture.ensure_cache()
    rootfs = fixture.restore_rootfs(Path(workdir, "rootfs"), cache)
    served = Path(workdir, "guest-disk.vmdk")
    # The VM's disk until the guest powers off: same size as the disk the power-off hook writes.
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized,adapter_type=lsilogic",
            str(served),
            "%dG" % GUEST_DISK_GIB,
        ],
        check=True,
    )
    guest = fixture.Guest(rootfs, cache=cache, work_dir=workdir).start()
    state = Path(workdir, "power-off-hook.json")
    state.write_text(
        json.dumps(
            {
                "pid": guest.proc.pid,
                "rootfs": str(rootfs),
                "vmdk": str(served),
                "out_dir": str(Path(workdir, "disk")),
                "size_gib": GUEST_DISK_GIB,
            }
        )
    )
    vm = {
        "name": "debian12-web",
        "guest_id": "debian12_64Guest",
        "power": "poweredOn",
        "disks": [{"file": str(served)}],
        "on_power_off": [sys.executable, "-m", "tests.demo", "--power-off-hook", str(state)],
    }
    host = dict(
        guest.host_vars(),
        vm_name="debian12-web",
        guest_prepare_login_user=fixture.LOGIN_USER,
        guest_prepare_kernel_local_repo="/srv/debs",
        guest_prepare_fstab_devices=guest.fstab_devices(),
    )
    return guest, vm, {"debian12-web": host}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--fast", action="store_true", help="skip the guest; export a small disk (about a minute)")
    parser.add_argument("--power-off-hook", metavar="STATE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.power_off_hook:
        return power_off_hook(args.power_off_hook)
    started = time.monotonic()
    guest = None
    # vcsim runs the power-off hook as `python -m tests.demo`: it must find this repository.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="esxi2ami-demo-") as workdir:
        try:
            if args.fast:
                disk = small_disk(Path(workdir, "demo-web01.raw"))
                vm = disk_vm("demo-web01", disk, guest_id="debian12_64Guest", power="poweredOn")
                hosts = {"demo-web01": {"vm_name": "demo-web01", "esxi2ami_skip_guest_prepare": True}}
            else:
                print(
                    "demo: preparing the Debian guest (first run: debootstrap, a few minutes; then cached)", flush=True
                )
                guest, vm, hosts = prepare_guest(workdir)
            print("demo: starting the vCenter and AWS simulators on 127.0.0.1", flush=True)
            with Vcsim(config={"vms": [vm]}, shutdown_delay=0.5) as vcenter, MotoVmImport(task_duration=20.0) as aws:
                aws.client("s3").create_bucket(Bucket=BUCKET)
                inventory = Path(workdir, "inventory.yml")
                inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
                env = dict(os.environ)
                env.update(vcenter.env)
                env.update(aws.env)
                env.update(
                    ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
                    ANSIBLE_FORCE_COLOR="0",
                    ANSIBLE_HOST_KEY_CHECKING="True",
                )
                print(
                    "demo: endpoints a user would set: %s"
                    % " ".join(
                        "%s=%s" % (k, v)
                        for k, v in sorted({**vcenter.env, **aws.env}.items())
                        if "SECRET" not in k and "PASSWORD" not in k
                    )
                )
                rc = run_playbook(
                    workdir,
                    inventory,
                    {
                        "vm_to_ami_s3_bucket": BUCKET,
                        "vm_to_ami_tags": {"Project": "esxi2ami-demo"},
                        "vm_to_ami_poll_interval": 2,
                        "vm_to_ami_progress_interval": 5,
                    },
                    env,
                )
                images = show_result(aws, started)
        finally:
            if guest is not None:
                guest.stop()
    if rc != 0 or not images:
        print("demo: FAILED (ansible-playbook rc=%d, %d AMI(s))" % (rc, len(images)))
        return 1
    print("demo: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
