"""guest_prepare on a real Debian 12 guest (systemd-nspawn, reached over SSH by ansible-playbook):
check mode -> apply -> check mode -> apply, then the tree becomes a disk that is inspected offline and
booted under qemu with another NIC, DHCP and a fake IMDSv2; SSH with the key only IMDS knows must work."""

import hashlib
import os
import re
from pathlib import Path

import pytest

from tests.fixtures.guest import guest as guest_lib
from tests.integration.playbook import run_playbook

HOST = "guest-fixture"
ROLE_PREFIX = "esxi2ami.migrate.guest_prepare : "
# A "custom" kernel that GRUB would list first (higher version) and that cannot boot: no modules, no
# initramfs. Only a correct GRUB default (the stock kernel) lets the boot check succeed.
CUSTOM_KERNEL = "6.9.0-99-custom"
WATCHED = ("etc", "boot", "usr/local", "var/lib/dpkg/status", "home/admin/.ssh")
# files the running container itself rewrites, whatever the role does
NOISE = re.compile(r"^etc/(ld\.so\.cache|machine-id|mtab|resolv\.conf|\.pwd\.lock)$")


def _snapshot(tree):
    """sha256 of every regular file (and symlink target) under the watched paths of a guest tree."""
    out = {}
    for top in WATCHED:
        base = Path(tree, top)
        paths = [base] if base.is_file() else (p for p in base.rglob("*"))
        for path in paths:
            rel = str(path.relative_to(tree))
            if NOISE.match(rel):
                continue
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _play():
    return [
        {
            "name": "prepare the guest for EC2",
            "hosts": "guests",
            "become": True,
            "gather_facts": True,
            "roles": [{"role": "esxi2ami.migrate.guest_prepare"}],
        }
    ]


def _changed_tasks(result):
    return [r["_task"].replace(ROLE_PREFIX, "") for r in result.results(HOST) if r.get("changed")]


def _report(result):
    for res in result.results(HOST):
        if res["_task"].endswith("Build the readiness report"):
            return res["ansible_facts"]["guest_prepare_report"]
    raise AssertionError("no readiness report in %r" % result)


@pytest.fixture(scope="module")
def runs(guest):
    """The four runs of the Done-means flow, with snapshots of the tree around the first check."""
    tree = guest.rootfs
    root_uuid = guest_lib.root_uuid_of(tree)
    guest.ssh("cp /boot/vmlinuz-*-amd64 /boot/vmlinuz-%s" % CUSTOM_KERNEL)
    extra = {
        "guest_prepare_kernel_local_repo": "/srv/debs",
        # the container cannot probe the VM's disk: give the ids the disk builder will use
        "guest_prepare_fstab_devices": guest_lib.disk_ids(root_uuid),
    }
    out = {"root_uuid": root_uuid, "before": _snapshot(tree)}
    for name, check in (("check1", True), ("apply1", False), ("check2", True), ("apply2", False)):
        out[name] = run_playbook(_play(), inventory=guest.inventory, extra_vars=extra, check=check, diff=True)
        if name == "check1":
            out["after_check1"] = _snapshot(tree)
    return out


def test_first_check_mode_reports_changes_and_changes_nothing(runs):
    res = runs["check1"]
    assert res.rc == 0, res
    changed = _changed_tasks(res)
    for task in (
        "Report the stock kernel packages that would come from the local folder (check mode)",
        "Replace static, NIC-pinned network configuration with DHCP on any Ethernet NIC",
        "Install the key sync script",
        "Run the key sync from cron (at boot and every few minutes)",
        "Load the EC2 storage and network drivers from the initramfs (initramfs-tools)",
        "Mount file systems by UUID instead of device names",
    ):
        assert task in changed, changed
    before, after = runs["before"], runs["after_check1"]
    assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == set()
    assert _report(res)["check_mode"] is True


def test_apply_prepares_the_guest(runs, guest):
    res = runs["apply1"]
    assert res.rc == 0, res
    report = _report(res)
    assert report["ready"] is True and report["blockers"] == []
    assert report["warnings"] == [
        "running in a container: file system, disk and boot loader checks skipped, boot loader writes skipped"
    ]
    assert report["in_container"] is True and report["bootloader_writes"] is False
    assert report["stock_kernel"].endswith("-amd64")
    assert report["parts"]["kernel"]["installed"] == ["linux-image-amd64"]
    assert report["parts"]["kernel"]["grub_default"] == (
        "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux %s" % report["stock_kernel"]
    )
    assert sorted(c["path"] for c in report["parts"]["network"]) == [
        "/etc/network/interfaces",
        "/etc/udev/rules.d/70-persistent-net.rules",
    ]
    assert report["parts"]["fstab"]["changes"] == [
        {"device": "/dev/sda1", "spec": "UUID=%s" % runs["root_uuid"], "mount": "/"}
    ]
    assert report["initramfs_drivers"] == ["nvme", "ena", "xen-blkfront", "xen-netfront"]
    # the originals are kept on the guest
    backups = guest.ssh("ls -R /var/backups/esxi2ami").stdout
    assert "interfaces" in backups and "70-persistent-net.rules" in backups and "fstab" in backups
    # the container has no boot disk: update-grub must not have run
    handlers = [r for r in res.results(HOST) if "Regenerate the GRUB configuration" in r["_task"]]
    assert all(r.get("skipped") for r in handlers), handlers


@pytest.mark.parametrize("name", ["check2", "apply2"])
def test_second_runs_change_nothing(runs, name):
    res = runs[name]
    assert res.rc == 0, res
    assert res.stats[HOST]["changed"] == 0, _changed_tasks(res)
    assert res.stats[HOST]["failures"] == 0


@pytest.fixture(scope="module")
def disk(runs, guest, guest_work_dir):
    """The prepared tree as a bootable disk (the container is stopped first)."""
    guest.stop()
    raw, _vmdk = guest_lib.build_disk(guest.rootfs, guest_work_dir / "gp-disk", name="prepared", vmdk=False)
    return raw


def test_offline_inspection_confirms_the_changes(runs, disk, guest_cache):
    stock = _report(runs["apply1"])["stock_kernel"]
    found = guest_lib.inspect(
        disk,
        files=["/etc/network/interfaces", "/etc/fstab", "/etc/cron.d/esxi2ami-ssh-keys", "/etc/esxi2ami/ssh-keys.conf"],
        commands=[
            "dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' linux-image-amd64",
            "grep -E '^\\s*(menuentry|submenu|set default=)|^\\s+linux\\s' /boot/grub/grub.cfg",
            "lsinitramfs /boot/initrd.img-%s | grep -E '/(nvme|ena|xen-blkfront|xen-netfront)\\.ko'" % stock,
            "ls /etc/udev/rules.d/",
            "test -x /usr/local/sbin/esxi2ami-fetch-ssh-keys && grep -c X-aws-ec2-metadata-token "
            "/usr/local/sbin/esxi2ami-fetch-ssh-keys",
        ],
        cache=guest_cache,
    )
    files, cmds = found["files"], found["commands"]
    assert found["os"]["distro"] == "debian"
    interfaces = files["/etc/network/interfaces"]
    assert "static" not in interfaces and "ens192" not in interfaces
    assert "auto /en*=esxi2ami-dhcp /eth*=esxi2ami-dhcp" in interfaces
    assert "iface esxi2ami-dhcp inet dhcp" in interfaces
    entries = [line.split() for line in files["/etc/fstab"].splitlines() if line.strip() and line[0] != "#"]
    assert entries == [["UUID=%s" % runs["root_uuid"], "/", "ext4", "errors=remount-ro", "0", "1"]]
    cron = files["/etc/cron.d/esxi2ami-ssh-keys"]
    assert "@reboot root /usr/local/sbin/esxi2ami-fetch-ssh-keys --boot" in cron
    assert "*/5 * * * * root /usr/local/sbin/esxi2ami-fetch-ssh-keys" in cron
    assert "LOGIN_USER=admin" in files["/etc/esxi2ami/ssh-keys.conf"]
    assert "IMDS_ENDPOINT=http://169.254.169.254" in files["/etc/esxi2ami/ssh-keys.conf"]
    assert cmds[next(c for c in cmds if c.startswith("dpkg-query"))]["output"].split() == ["linux-image-amd64", "ii"]
    grub = cmds[next(c for c in cmds if "grub.cfg" in c)]["output"]
    assert 'set default="Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux %s"' % stock in grub
    # GRUB lists the custom kernel first: only the default entry makes the stock kernel boot
    assert grub.index("vmlinuz-%s" % CUSTOM_KERNEL) < grub.index("vmlinuz-%s" % stock)
    drivers = cmds[next(c for c in cmds if c.startswith("lsinitramfs"))]["output"]
    for module in ("nvme", "ena", "xen-blkfront", "xen-netfront"):
        assert "/%s.ko" % module in drivers, drivers
    assert "70-persistent-net.rules" not in cmds["ls /etc/udev/rules.d/"]["output"]
    assert int(cmds[next(c for c in cmds if c.startswith("test -x"))]["output"].strip()) >= 1


def test_boot_check_dhcp_imdsv2_key_and_ssh(runs, disk, imds_login_key, guest_work_dir):
    key, _pub = imds_login_key
    result = guest_lib.boot_check(disk, "admin", key, work_dir=guest_work_dir / "gp-boot")
    assert result["got_address"], result
    assert result["fetched_key_with_token"], result
    assert result["ssh_ok"], result
    assert result["tokenless_refused"] is True, result
    facts = result["guest"]["facts"]
    stock = _report(runs["apply1"])["stock_kernel"]
    assert facts.splitlines()[0] == stock, facts
    assert "ens192" not in facts and re.search(r"^(en|eth)\S+\s+UP\s+169\.254\.", facts, re.M), facts
    # every metadata request after the token carried it; none came without one and succeeded
    assert not [
        r for r in result["imds_requests"] if r["method"] == "GET" and r["status"] == 200 and r["token"] != "valid"
    ]


def test_systemd_timer_created_user_and_cloud_init_options(
    guest_rootfs_factory,
    guest_cache,
    guest_work_dir,
    imds_login_key,
):
    """The non-default options on a second guest: systemd timer instead of cron, a login user the role
    creates (with sudo), cloud-init switched to the EC2 datasource, and the IMDS endpoint taken from the
    role's variable: the installed service, run by systemd, fetches the key from a fake IMDSv2 inside
    the container, and SSH as the new user with that key works."""
    key, pub = imds_login_key
    tree = guest_rootfs_factory("gp-options")
    (tree / "etc/cloud").mkdir(parents=True, exist_ok=True)
    (tree / "etc/cloud/cloud.cfg").write_text("# stand-in for cloud-init's main configuration\n")
    (tree / "etc/cloud/cloud-init.disabled").write_text("")
    (tree / "root/imds").mkdir(parents=True)
    (tree / "root/imds/fake_imds.py").write_bytes(Path(guest_lib.FAKE_IMDS).read_bytes())
    (tree / "root/imds/key.pub").write_text(pub + "\n")
    extra = {
        "guest_prepare_kernel": False,
        "guest_prepare_drivers": False,
        "guest_prepare_fstab": False,
        "guest_prepare_key_sync_method": "systemd",
        "guest_prepare_key_sync_interval": 7,
        "guest_prepare_login_user": "ec2-user",
        "guest_prepare_login_user_create": True,
        "guest_prepare_imds_endpoint": "http://127.0.0.1:8169",
        "guest_prepare_cloud_init": "ec2",
    }
    with guest_lib.Guest(tree, cache=guest_cache, work_dir=guest_work_dir) as box:
        inventory = box.write_inventory()
        check = run_playbook(_play(), inventory=inventory, extra_vars=extra, check=True)
        assert check.rc == 0, check
        assert check.stats[HOST]["changed"] > 0
        assert not (tree / "etc/systemd/system/esxi2ami-ssh-keys.timer").exists()
        first = run_playbook(_play(), inventory=inventory, extra_vars=extra)
        assert first.rc == 0, first
        again = run_playbook(_play(), inventory=inventory, extra_vars=extra)
        assert again.rc == 0 and again.stats[HOST]["changed"] == 0, _changed_tasks(again)

        assert "OnUnitActiveSec=7min" in (tree / "etc/systemd/system/esxi2ami-ssh-keys.timer").read_text()
        assert not (tree / "etc/cron.d/esxi2ami-ssh-keys").exists()
        assert box.ssh("systemctl is-enabled esxi2ami-ssh-keys.timer").stdout.strip() == "enabled"
        cloud = (tree / "etc/cloud/cloud.cfg.d/90-esxi2ami-ec2.cfg").read_text()
        assert "datasource_list: [Ec2, None]" in cloud and "http://127.0.0.1:8169" in cloud
        assert not (tree / "etc/cloud/cloud-init.disabled").exists()

        box.ssh(
            "systemd-run --unit=fake-imds /usr/bin/python3 /root/imds/fake_imds.py --listen 127.0.0.1:8169 "
            "--key guest=/root/imds/key.pub --log /root/imds/requests.log && "
            "for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:8169/ && break; sleep 0.2; done"
        )
        box.ssh("systemctl start esxi2ami-ssh-keys.service")
        auth = (tree / "home/ec2-user/.ssh/authorized_keys").read_text().splitlines()
        assert auth == ["# BEGIN esxi2ami imds keys", pub, "# END esxi2ami imds keys"]
        journal = box.ssh("journalctl -t esxi2ami-ssh-keys --no-pager -o cat").stdout
        assert "1 key(s) from IMDS written to /home/ec2-user/.ssh/authorized_keys" in journal
        login = guest_lib.run(
            [
                "ssh",
                "-i",
                key,
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                *box.ssh_options(),
                "-l",
                "ec2-user",
                box.netns,
                "id -un; sudo -n id -un",
            ],
            capture=True,
            check=False,
            timeout=60,
        )
        assert login.returncode == 0 and login.stdout.split() == ["ec2-user", "root"], login

        # preflight: a guest VM Import would reject (no GRUB tools, a Windows entry in the menu) is stopped,
        # with every reason, before anything changes; with guest_prepare_preflight_fail=false it is reported
        box.ssh(
            "mv /usr/sbin/grub-mkconfig /usr/sbin/grub-mkconfig.away && "
            "echo \"menuentry 'Windows Boot Manager (on /dev/sdb1)' { chainloader +1 }\" >> /boot/grub/grub.cfg"
        )
        only_preflight = {
            "guest_prepare_%s" % part: False
            for part in ("kernel", "network", "key_sync", "drivers", "fstab", "serial_console")
        }
        only_preflight["guest_prepare_cloud_init"] = "ignore"
        stopped = run_playbook(_play(), inventory=inventory, extra_vars=only_preflight, check=True)
        assert stopped.rc != 0
        failure = [r for r in stopped.results(HOST) if r.get("failed")]
        assert [r["_task"] for r in failure] == [ROLE_PREFIX + "Stop on what VM Import would reject"]
        assert "no GRUB found" in failure[0]["msg"] and "dual boot" in failure[0]["msg"]
        reported = run_playbook(
            _play(), inventory=inventory, extra_vars=dict(only_preflight, guest_prepare_preflight_fail=False)
        )
        assert reported.rc == 0, reported
        report = _report(reported)
        assert report["ready"] is False and len(report["blockers"]) == 2, report
