"""guest_prepare's file logic on file trees of each distribution family we have no mirror for here
(RHEL family, Ubuntu) and of Debian: network conversion to DHCP on any NIC, fstab by UUID, GRUB default.
The module_utils run directly on the trees, and the modules run through ansible-playbook (-c local)
with the tree as their root, in check mode, for real, and again (idempotency)."""

import configparser
import subprocess
from pathlib import Path

import pytest
import yaml

from ansible_collections.esxi2ami.migrate.plugins.module_utils import _guest_boot as boot
from ansible_collections.esxi2ami.migrate.plugins.module_utils import _guest_network as net
from tests.integration.playbook import run_playbook

# --------------------------------------------------------------------------------------------- trees

DEBIAN = {
    "etc/network/interfaces": """\
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

allow-hotplug ens192
iface ens192 inet static
\taddress 192.168.50.20/24
\tgateway 192.168.50.1
\tdns-nameservers 192.168.50.2
""",
    "etc/network/interfaces.d/backup-nic": """\
auto ens224 br0
iface ens224 inet manual

iface br0 inet static
    address 10.0.0.2/24
    bridge_ports ens224
""",
    "etc/udev/rules.d/70-persistent-net.rules": (
        'SUBSYSTEM=="net", ACTION=="add", ATTR{address}=="00:50:56:8a:3c:19", NAME="ens192"\n'
    ),
    "etc/udev/rules.d/99-local.rules": "# unrelated rule\n",
    "etc/fstab": "/dev/sda1 / ext4 errors=remount-ro 0 1\n/dev/sdb1 none swap sw 0 0\nproc /proc proc defaults 0 0\n",
}

UBUNTU = {
    "etc/netplan/00-installer-config.yaml": """\
# This is the network config written by 'subiquity'
network:
  version: 2
  ethernets:
    ens192:
      match:
        macaddress: "00:50:56:8a:3c:19"
      set-name: ens192
      addresses: [192.168.50.21/24]
      routes:
        - to: default
          via: 192.168.50.1
      nameservers:
        addresses: [192.168.50.2]
        search: [corp.example]
""",
    "etc/netplan/50-cloud-init.yaml": """\
network:
  version: 2
  ethernets:
    eth0:
      dhcp4: true
      match:
        name: "e*"
""",
    "etc/fstab": (
        "UUID=2f1c6a6e-1b7e-4a3b-9c51-1a2b3c4d5e6f / ext4 defaults 0 1\n"
        "/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:1:0-part1 /data xfs defaults 0 2\n"
    ),
}

RHEL8 = {
    "etc/sysconfig/network-scripts/ifcfg-ens192": """\
TYPE=Ethernet
PROXY_METHOD=none
BOOTPROTO=none
DEFROUTE=yes
NAME=ens192
UUID=8f6f0d3c-5b2e-4f6e-9d7a-0a1b2c3d4e5f
DEVICE=ens192
HWADDR=00:50:56:8A:3C:19
ONBOOT=yes
IPADDR=192.168.50.22
PREFIX=24
GATEWAY=192.168.50.1
DNS1=192.168.50.2
""",
    "etc/sysconfig/network-scripts/ifcfg-lo": "DEVICE=lo\nIPADDR=127.0.0.1\nNETMASK=255.0.0.0\nONBOOT=yes\n",
    "etc/sysconfig/network-scripts/ifcfg-bond0": "TYPE=Bond\nDEVICE=bond0\nBOOTPROTO=none\nIPADDR=10.1.1.1\n",
    "etc/fstab": "/dev/mapper/rhel-root / xfs defaults 0 0\n/dev/sda1 /boot xfs defaults 0 0\n",
}

RHEL9 = {
    "etc/NetworkManager/system-connections/ens192.nmconnection": """\
[connection]
id=ens192
uuid=8f6f0d3c-5b2e-4f6e-9d7a-0a1b2c3d4e5f
type=ethernet
interface-name=ens192

[ethernet]
mac-address=00:50:56:8A:3C:19

[ipv4]
address1=192.168.50.23/24,192.168.50.1
dns=192.168.50.2;
method=manual

[ipv6]
addr-gen-mode=eui64
method=auto

[proxy]
""",
    "etc/NetworkManager/system-connections/vpn.nmconnection": (
        "[connection]\nid=vpn\ntype=vpn\n\n[ipv4]\nmethod=manual\n"
    ),
}

NETWORKD = {
    "etc/systemd/network/10-ens192.network": """\
[Match]
Name=ens192

[Network]
Address=192.168.50.24/24
Gateway=192.168.50.1
DNS=192.168.50.2

[Route]
Destination=10.0.0.0/8
Gateway=192.168.50.254
""",
    "etc/systemd/network/10-vmxnet.link": "[Match]\nMACAddress=00:50:56:8a:3c:19\n\n[Link]\nName=ens192\n",
    "etc/systemd/network/20-dummy.netdev": "[NetDev]\nName=dummy0\nKind=dummy\n",
}


def make_tree(tmp_path, files, name="root"):
    root = tmp_path / name
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def apply(root):
    plan = net.plan_network(str(root))
    real = [c for c in plan if c.action != "keep"]
    net.apply_plan(real, root=str(root), backup_dir="/var/backups/esxi2ami")
    return plan


# --------------------------------------------------------------------------------------------- network


def test_debian_ifupdown_any_nic_dhcp(tmp_path):
    root = make_tree(tmp_path, DEBIAN)
    plan = apply(root)
    text = (root / "etc/network/interfaces").read_text()
    assert "ens192" not in text and "static" not in text
    assert "auto /en*=esxi2ami-dhcp /eth*=esxi2ami-dhcp\niface esxi2ami-dhcp inet dhcp\n" in text
    assert "auto lo\niface lo inet loopback" in text and "source /etc/network/interfaces.d/*" in text
    # the second NIC's stanza goes too (its name is vSphere's), the bridge stays and is reported
    extra = (root / "etc/network/interfaces.d/backup-nic").read_text()
    assert "ens224" not in extra.split("bridge_ports")[0]
    assert "auto br0" in extra and "iface br0 inet static" in extra
    assert extra.count("esxi2ami-dhcp") == 0, "only one file carries the catch-all stanza"
    warnings = [r for c in plan if c.action == "keep" for r in c.reasons]
    warnings += [r for c in plan for r in c.reasons if "review" in r]
    assert any("br0" in w for w in warnings)
    # MAC pinning removed, other udev rules kept, originals backed up
    assert not (root / "etc/udev/rules.d/70-persistent-net.rules").exists()
    assert (root / "etc/udev/rules.d/99-local.rules").exists()
    backup = root / "var/backups/esxi2ami"
    assert (backup / "etc/network/interfaces").read_text() == DEBIAN["etc/network/interfaces"]
    assert (backup / "etc/udev/rules.d/70-persistent-net.rules").exists()
    # idempotent
    assert [c for c in net.plan_network(str(root)) if c.action != "keep"] == []


def test_ifupdown_dhcp_by_name_is_also_unpinned():
    text = "auto eth0\niface eth0 inet dhcp\niface eth0 inet6 auto\n"
    new, reasons = net.convert_ifupdown(text, has_catch_all=False)
    assert "eth0" not in new.replace("/eth*", "")
    assert "iface esxi2ami-dhcp inet dhcp" in new
    assert len(reasons) == 3


def test_ubuntu_netplan_static_mac_pinned(tmp_path):
    root = make_tree(tmp_path, UBUNTU)
    plan = apply(root)
    assert [c.path for c in plan] == ["/etc/netplan/00-installer-config.yaml"], "50-cloud-init is already DHCP any NIC"
    doc = yaml.safe_load((root / "etc/netplan/00-installer-config.yaml").read_text())
    assert doc == {"network": {"version": 2, "ethernets": {"ens192": {"dhcp4": True, "match": {"name": "e*"}}}}}
    assert (root / "var/backups/esxi2ami/etc/netplan/00-installer-config.yaml").read_text().startswith("# This is")
    assert net.plan_network(str(root)) == []


def test_netplan_invalid_yaml_names_the_file(tmp_path):
    root = make_tree(tmp_path, {"etc/netplan/01-bad.yaml": "network: [unclosed\n"})
    with pytest.raises(net.NetworkConfigError, match="/etc/netplan/01-bad.yaml is not valid YAML"):
        net.plan_network(str(root))


def _ifcfg(text):
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_rhel8_ifcfg(tmp_path):
    root = make_tree(tmp_path, RHEL8)
    plan = apply(root)
    assert [c.path for c in plan] == ["/etc/sysconfig/network-scripts/ifcfg-ens192"]
    values = _ifcfg((root / "etc/sysconfig/network-scripts/ifcfg-ens192").read_text())
    assert values["BOOTPROTO"] == "dhcp" and values["ONBOOT"] == "yes" and values["NAME"] == "ens192"
    for gone in ("IPADDR", "PREFIX", "GATEWAY", "DNS1", "HWADDR", "DEVICE"):
        assert gone not in values
    # loopback and the bond are not Ethernet profiles: untouched
    assert (root / "etc/sysconfig/network-scripts/ifcfg-lo").read_text() == RHEL8[
        "etc/sysconfig/network-scripts/ifcfg-lo"
    ]
    assert "IPADDR=10.1.1.1" in (root / "etc/sysconfig/network-scripts/ifcfg-bond0").read_text()
    assert net.plan_network(str(root)) == []


def test_rhel9_networkmanager_keyfile(tmp_path):
    root = make_tree(tmp_path, RHEL9)
    apply(root)
    keyfile = configparser.ConfigParser(interpolation=None)
    keyfile.read(root / "etc/NetworkManager/system-connections/ens192.nmconnection")
    assert keyfile["ipv4"]["method"] == "auto"
    assert "address1" not in keyfile["ipv4"] and "dns" not in keyfile["ipv4"]
    assert "interface-name" not in keyfile["connection"] and keyfile["connection"]["type"] == "ethernet"
    assert "mac-address" not in keyfile["ethernet"]
    assert keyfile["ipv6"]["method"] == "auto"
    vpn = (root / "etc/NetworkManager/system-connections/vpn.nmconnection").read_text()
    assert vpn == RHEL9["etc/NetworkManager/system-connections/vpn.nmconnection"]
    assert net.plan_network(str(root)) == []


def test_systemd_networkd(tmp_path):
    root = make_tree(tmp_path, NETWORKD)
    apply(root)
    unit = (root / "etc/systemd/network/10-ens192.network").read_text()
    parsed = configparser.ConfigParser(interpolation=None, strict=False)
    parsed.read_string(unit)
    assert parsed["Match"]["Name"] == "en* eth*"
    assert dict(parsed["Network"]) == {"dhcp": "ipv4"}
    assert "[Route]" not in unit
    assert not (root / "etc/systemd/network/10-vmxnet.link").exists()
    assert (root / "etc/systemd/network/20-dummy.netdev").exists()
    assert net.plan_network(str(root)) == []


# --------------------------------------------------------------------------------------------- fstab


def test_fstab_rewrite_keeps_stable_entries():
    ids = {"/dev/sda1": {"UUID": "11111111-2222-3333-4444-555555555555"}, "/dev/sdb1": {"PARTUUID": "abcd-02"}}
    new, changes, unresolved = boot.rewrite_fstab(DEBIAN["etc/fstab"] + "/dev/sdc1 /x ext4 defaults 0 2\n", ids.get)
    assert changes == [
        ("/dev/sda1", "UUID=11111111-2222-3333-4444-555555555555", "/"),
        ("/dev/sdb1", "PARTUUID=abcd-02", "none"),
    ]
    assert unresolved == ["/dev/sdc1"]
    assert "UUID=11111111-2222-3333-4444-555555555555 / ext4 errors=remount-ro 0 1\n" in new
    assert "# esxi2ami: was /dev/sda1\n" in new and "proc /proc proc defaults 0 0\n" in new
    assert "/dev/sdc1 /x ext4" in new
    again, changes2, unresolved2 = boot.rewrite_fstab(new, ids.get)
    assert unresolved2 == ["/dev/sdc1"]
    assert again == new and changes2 == []


def test_fstab_lvm_and_by_uuid_untouched():
    new, changes, unresolved = boot.rewrite_fstab(RHEL8["etc/fstab"] + UBUNTU["etc/fstab"], lambda dev: None)
    assert changes == []
    assert unresolved == ["/dev/sda1", "/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:1:0-part1"]


def test_blkid_export_of_a_real_filesystem(tmp_path):
    image = tmp_path / "fs.img"
    with open(image, "wb") as handle:
        handle.truncate(8 << 20)
    uuid = "0f0e0d0c-0b0a-4908-8706-050403020100"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", uuid, "-L", "data", str(image)], check=True)
    out = subprocess.run(["blkid", "-o", "export", str(image)], check=True, capture_output=True, text=True).stdout
    ids = boot.parse_blkid_export(out)
    assert ids["UUID"] == uuid and ids["LABEL"] == "data" and ids["TYPE"] == "ext4"
    assert boot.stable_name(ids) == "UUID=%s" % uuid


# --------------------------------------------------------------------------------------------- GRUB


def _kernels(tmp_path, versions):
    root = tmp_path / "grubroot"
    (root / "boot").mkdir(parents=True, exist_ok=True)
    for version in versions:
        (root / "boot" / ("vmlinuz-%s" % version)).write_bytes(b"")
    return root


def test_grub_default_debian(tmp_path):
    root = _kernels(tmp_path, ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-28-amd64"])
    kernels = boot.installed_kernels(str(root))
    assert kernels == ["6.1.0-10-amd64", "6.1.0-9-amd64", "5.10.0-28-amd64"], "version sort, not text sort"
    assert boot.grub_default_entry(kernels, "6.1.0-10-amd64", "Debian") == "0"
    assert (
        boot.grub_default_entry(kernels, "6.1.0-9-amd64", "Debian")
        == "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-9-amd64"
    )
    with pytest.raises(ValueError, match="no /boot/vmlinuz-6.2"):
        boot.grub_default_entry(kernels, "6.2.0-1-amd64", "Debian")


def test_grub_default_follows_the_guests_grub_settings(tmp_path):
    root = _kernels(tmp_path, ["6.1.0-18-amd64", "6.9.0-1-custom"])
    (root / "etc/default/grub.d").mkdir(parents=True)
    (root / "etc/default/grub").write_text(
        "GRUB_DEFAULT=0\nGRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n"
    )
    task = [
        {
            "name": "grub",
            "esxi2ami.migrate.guest_grub_default": {"root": str(root), "kernel_version": "6.1.0-18-amd64"},
        }
    ]
    res = run_playbook(task).task("grub")
    assert res["default"] == "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-18-amd64"
    # every kernel at the top level, and a distributor of its own: the title alone, with that name
    (root / "etc/default/grub.d/40-site.cfg").write_text('GRUB_DISABLE_SUBMENU=y\nexport GRUB_DISTRIBUTOR="Corp"\n')
    res = run_playbook(task).task("grub")
    assert res["changed"] and res["default"] == "Corp GNU/Linux, with Linux 6.1.0-18-amd64"


def test_grub_default_ubuntu_with_newer_custom_kernel(tmp_path):
    root = _kernels(tmp_path, ["5.15.0-91-generic", "6.8.12-custom"])
    kernels = boot.installed_kernels(str(root))
    entry = boot.grub_default_entry(kernels, "5.15.0-91-generic", "Ubuntu")
    assert entry == "Advanced options for Ubuntu>Ubuntu, with Linux 5.15.0-91-generic"
    dropin = boot.grub_default_dropin(entry)
    # the drop-in is shell: it must set exactly that value when sourced
    value = subprocess.run(
        ["/bin/sh", "-c", '. "$1"; printf %s "$GRUB_DEFAULT"', "sh", "/dev/stdin"],
        input=dropin,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert value == entry


# ----------------------------------------------------------------------------- modules via ansible-playbook


@pytest.mark.parametrize("distro", ["debian", "ubuntu", "rhel8", "rhel9", "networkd"])
def test_guest_network_module_check_apply_idempotent(tmp_path, distro):
    files = {"debian": DEBIAN, "ubuntu": UBUNTU, "rhel8": RHEL8, "rhel9": RHEL9, "networkd": NETWORKD}[distro]
    root = make_tree(tmp_path, files)
    snapshot = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    task = [{"name": "net", "esxi2ami.migrate.guest_network": {"root": str(root)}, "register": "out"}]

    check = run_playbook(task, check=True, diff=True)
    assert check.rc == 0, check
    res = check.task("net")
    assert res["changed"] is True and res["changes"] and res["backups"] == []
    assert res["diff"], "diff mode shows the change"
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == snapshot, "check mode wrote files"

    real = run_playbook(task)
    res = real.task("net")
    assert res["changed"] is True
    assert all(Path(root, b.lstrip("/")).exists() for b in res["backups"])
    again = run_playbook(task).task("net")
    assert again["changed"] is False and again["changes"] == []


def test_guest_fstab_and_grub_default_modules_on_a_tree(tmp_path):
    root = make_tree(tmp_path, DEBIAN)
    for version in ("6.1.0-18-amd64", "6.9.0-1-custom"):
        (root / "boot").mkdir(exist_ok=True)
        (root / "boot" / ("vmlinuz-%s" % version)).write_bytes(b"")
    uuid = "48e38e3c-cf89-4eda-8a55-beceb2d500fc"
    tasks = [
        {
            "name": "fstab",
            "esxi2ami.migrate.guest_fstab": {
                "path": str(root / "etc/fstab"),
                "backup_dir": str(root / "var/backups/esxi2ami"),
                "devices": {"/dev/sda1": {"uuid": uuid}},
            },
        },
        {
            "name": "grub",
            "esxi2ami.migrate.guest_grub_default": {
                "root": str(root),
                "kernel_version": "6.1.0-18-amd64",
                "distributor": "Debian",
                "style": "grub_d",
            },
        },
    ]
    check = run_playbook(tasks, check=True)
    assert check.task("fstab")["changed"] and check.task("grub")["changed"]
    assert (root / "etc/fstab").read_text() == DEBIAN["etc/fstab"]
    assert not (root / "etc/default/grub.d").exists()

    real = run_playbook(tasks)
    fstab = real.task("fstab")
    assert fstab["changes"] == [{"device": "/dev/sda1", "spec": "UUID=%s" % uuid, "mount": "/"}]
    assert fstab["unresolved"] == ["/dev/sdb1"]
    assert (root / "etc/fstab").read_text().splitlines()[1] == "UUID=%s / ext4 errors=remount-ro 0 1" % uuid
    grub = real.task("grub")
    assert grub["default"] == "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-18-amd64"
    assert 'GRUB_DEFAULT="%s"' % grub["default"] in (root / "etc/default/grub.d/90-esxi2ami-default.cfg").read_text()

    again = run_playbook(tasks)
    assert not again.task("fstab")["changed"] and not again.task("grub")["changed"]

    strict = [dict(tasks[0])]
    strict[0]["esxi2ami.migrate.guest_fstab"] = dict(tasks[0]["esxi2ami.migrate.guest_fstab"], fail_on_unresolved=True)
    failed = run_playbook(strict).task("fstab")
    assert failed["failed"] and "/dev/sdb1" in failed["msg"] and "devices" in failed["msg"]


def test_grub_default_module_refuses_a_missing_kernel(tmp_path):
    root = _kernels(tmp_path, ["6.1.0-18-amd64"])
    task = [{"name": "grub", "esxi2ami.migrate.guest_grub_default": {"root": str(root), "kernel_version": "6.1.0-99"}}]
    res = run_playbook(task).task("grub")
    assert res["failed"] and "install the stock kernel package first" in res["msg"]


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"guest_prepare_key_sync_method": "anacron"}, ["guest_prepare_key_sync_method", "cron, systemd"]),
        ({"guest_prepare_cloud_init": "maybe"}, ["guest_prepare_cloud_init", "ec2, disable, ignore"]),
        ({"guest_prepare_key_sync_interval": "often"}, ["guest_prepare_key_sync_interval", "int"]),
    ],
)
def test_role_refuses_bad_variables_before_any_task(bad, words):
    """Argument specs stop the role first (check mode on localhost: nothing could change anyway)."""
    play = [
        {
            "name": "p",
            "hosts": "localhost",
            "gather_facts": False,
            "roles": [{"role": "esxi2ami.migrate.guest_prepare"}],
        }
    ]
    res = run_playbook(play, extra_vars=bad, check=True)
    assert res.rc != 0
    failed = [r for r in res.results() if r.get("failed")]
    assert len(failed) == 1 and "Validating arguments against arg spec" in failed[0]["_task"], failed
    for word in words:
        assert word in failed[0]["msg"], failed[0]["msg"]
