"""The vSphere simulator behaves like vCenter where the collection depends on it.

pyVmomi over TLS on 127.0.0.1 against tests/simulators/vcsim (fixtures in fixtures.py).
"""

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
import requests
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from tests.simulators.vcsim.launcher import (
    REPO,
    TOOLS_ISO,
    TWO_DISK_VM,
    Vcsim,
    VcsimError,
    default_disks,
    disk_vm,
    is_stream_optimized,
)

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

OVF = "{http://schemas.dmtf.org/ovf/envelope/1}"
VMW = "{http://www.vmware.com/schema/ovf}"
RASD = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"


# --- helpers -------------------------------------------------------------------------------------


def find_vm(si, name, folder="DC0/vm"):
    vm = si.content.searchIndex.FindByInventoryPath(f"{folder}/{name}")
    assert vm is not None, f"{folder}/{name} not in the inventory"
    return vm


def wait_until(predicate, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ensure_off(vm):
    if vm.runtime.powerState != "poweredOff":
        WaitForTask(vm.PowerOffVM_Task())


def ready_lease(vm):
    lease = vm.ExportVm()
    wait_until(lambda: lease.state != "initializing", what="lease ready")
    assert lease.state == "ready", lease.error
    return lease


def url_of(sim, device_url):
    return device_url.url.replace("*", f"{sim.host}:{sim.port}")


def download(sim, url, cookie=None, timeout=30):
    """GET an NFC URL; returns (status, headers, body, error) where error is a broken transfer."""
    headers = {"Cookie": cookie} if cookie else {}
    body, error = bytearray(), None
    with requests.get(url, headers=headers, verify=False, stream=True, timeout=timeout) as r:
        try:
            for chunk in r.iter_content(64 << 10):
                body += chunk
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as e:
            error = e
        return r.status_code, r.headers, bytes(body), error


def qemu_info(path):
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# --- connection ----------------------------------------------------------------------------------


def test_login_api_version_and_env(vcsim):
    si = SmartConnect(
        host=vcsim.env["VMWARE_HOST"],
        port=int(vcsim.env["VMWARE_PORT"]),
        user=vcsim.env["VMWARE_USER"],
        pwd=vcsim.env["VMWARE_PASSWORD"],
        disableSslCertValidation=True,
    )
    try:
        about = si.content.about
        assert tuple(int(p) for p in about.apiVersion.split(".")[:3]) >= (7, 0, 3)
        assert si._stub.version == "vim.version.v7_0_3_0"  # pyVmomi negotiated the 7.0.3 API
        assert about.apiType == "VirtualCenter"
    finally:
        Disconnect(si)
    assert vcsim.host == "127.0.0.1" and vcsim.env["VMWARE_VALIDATE_CERTS"] == "false"
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(host=vcsim.host, port=vcsim.port, user=vcsim.user, pwd="wrong", disableSslCertValidation=True)


def test_tls_certificate_is_not_trusted_by_default(vcsim):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{vcsim.host}:{vcsim.port}/sdk/vimServiceVersions.xml", timeout=10)


# --- inventory -----------------------------------------------------------------------------------


def test_two_disk_vm_with_iso(vcsim):
    si = vcsim.connect()
    vm = find_vm(si, TWO_DISK_VM)
    devices = vm.config.hardware.device
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    cdroms = [d for d in devices if isinstance(d, vim.vm.device.VirtualCdrom)]
    assert [d.key for d in disks] == [2000, 2001]
    assert [d.deviceInfo.label for d in disks] == ["Hard disk 1", "Hard disk 2"]
    boot, data = default_disks()["boot"], default_disks()["data"]
    assert [d.capacityInKB * 1024 for d in disks] == [qemu_info(boot)["virtual-size"], qemu_info(data)["virtual-size"]]
    assert len(cdroms) == 1 and cdroms[0].key == 3000
    assert isinstance(cdroms[0].backing, vim.vm.device.VirtualCdrom.IsoBackingInfo)
    assert cdroms[0].backing.fileName == TOOLS_ISO
    assert cdroms[0].connectable.connected and cdroms[0].connectable.startConnected
    assert vm.runtime.powerState == "poweredOn"
    assert vm.guest.toolsRunningStatus == "guestToolsRunning"
    assert vm.config.guestId == "debian11_64Guest"


def test_device_keys_are_deterministic(vcsim_factory):
    keys = []
    for _attempt in range(2):
        si = vcsim_factory().connect()
        keys.append(
            {
                name: [d.key for d in find_vm(si, name).config.hardware.device]
                for name in ("DC0_H0_VM0", "DC0_C0_RP0_VM1", TWO_DISK_VM)
            }
        )
    assert keys[0] == keys[1]
    vm0 = {type(d).__name__.split(".")[-1]: d for d in find_vm(si, "DC0_H0_VM0").config.hardware.device}
    assert vm0["VirtualDisk"].key == 2000 and vm0["VirtualCdrom"].key == 3000
    assert vm0["VirtualCdrom"].controllerKey == 200  # on IDE 0, not on the disk's SCSI unit


def test_same_name_in_two_folders(vcsim_factory):
    sim = vcsim_factory(
        config={
            "vms": [
                {"name": "dup", "folder": "team-a", "disks": [{"capacity_mb": 4}]},
                {"name": "dup", "folder": "team-b/nested", "power": "poweredOff", "disks": [{"capacity_mb": 4}]},
            ]
        }
    )
    si = sim.connect()
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    dups = [vm for vm in view.view if vm.name == "dup"]
    view.Destroy()
    assert len(dups) == 2
    a, b = find_vm(si, "dup", "DC0/vm/team-a"), find_vm(si, "dup", "DC0/vm/team-b/nested")
    assert a != b and {a, b} == set(dups)
    assert (a.runtime.powerState, b.runtime.powerState) == ("poweredOn", "poweredOff")
    assert a.config.files.vmPathName != b.config.files.vmPathName


def test_bad_config_is_reported(tmp_path):
    sim = Vcsim(config={"vms": [{"name": "x", "firmware": "uefi"}]}, defaults=False)
    with pytest.raises(VcsimError, match="firmware must be bios or efi"):
        sim.start()
    assert sim.proc is None and sim.workdir is None  # nothing left behind
    with pytest.raises(VcsimError, match="does not exist"):
        Vcsim(config={"vms": [{"name": "x", "disks": [{"file": str(tmp_path / "missing.raw")}]}]}).start()


# --- power ---------------------------------------------------------------------------------------


def test_power_off(vcsim):
    vm = find_vm(vcsim.connect(), "DC0_H0_VM1")
    WaitForTask(vm.PowerOffVM_Task())
    assert vm.runtime.powerState == "poweredOff"
    assert vm.guest.toolsRunningStatus == "guestToolsNotRunning"
    with pytest.raises(vim.fault.InvalidPowerState):
        WaitForTask(vm.PowerOffVM_Task())
    WaitForTask(vm.PowerOnVM_Task())
    assert vm.guest.toolsRunningStatus == "guestToolsRunning"


def test_graceful_shutdown_powers_off_after_a_delay(vcsim_factory):
    sim = vcsim_factory(shutdown_delay=3)
    vm = find_vm(sim.connect(), TWO_DISK_VM)
    assert vm.guest.toolsRunningStatus == "guestToolsRunning"
    vm.ShutdownGuest()  # returns at once, like vSphere; the guest takes its time
    assert vm.runtime.powerState == "poweredOn"
    assert vm.guest.guestState == "shuttingDown"
    wait_until(lambda: vm.runtime.powerState == "poweredOff", what="guest shutdown")
    assert vm.guest.toolsRunningStatus == "guestToolsNotRunning"
    with pytest.raises(vim.fault.InvalidPowerState):
        vm.ShutdownGuest()


def test_power_off_hook_runs_before_the_vm_is_off(vcsim_factory, tmp_path):
    """on_power_off runs to completion before the power state changes, for guest shutdown and hard power off."""
    marks = tmp_path / "marks"
    hook = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write('off\\n')", str(marks)]
    vms = [{"name": name, "on_power_off": hook, "disks": [{"capacity_mb": 4}]} for name in ("soft", "hard")]
    sim = vcsim_factory(config={"vms": vms}, defaults=False, shutdown_delay=0.5)
    si = sim.connect()
    soft, hard = find_vm(si, "soft"), find_vm(si, "hard")
    soft.ShutdownGuest()
    wait_until(lambda: soft.runtime.powerState == "poweredOff", what="guest shutdown")
    assert marks.read_text() == "off\n"
    WaitForTask(hard.PowerOffVM_Task())
    assert marks.read_text() == "off\noff\n"
    WaitForTask(hard.PowerOnVM_Task())
    WaitForTask(hard.PowerOffVM_Task())
    assert marks.read_text().count("off") == 3
    with pytest.raises(vim.fault.InvalidPowerState):
        WaitForTask(hard.PowerOffVM_Task())  # already off: no hook
    assert marks.read_text().count("off") == 3


def test_shutdown_needs_vmware_tools(vcsim_factory):
    sim = vcsim_factory(config={"vms": [{"name": "no-tools", "tools": False, "disks": [{"capacity_mb": 4}]}]})
    vm = find_vm(sim.connect(), "no-tools")
    assert vm.runtime.powerState == "poweredOn"
    assert vm.guest.toolsStatus == "toolsNotInstalled"
    assert vm.guest.toolsRunningStatus == "guestToolsNotRunning"
    with pytest.raises(vim.fault.ToolsUnavailable):
        vm.ShutdownGuest()
    assert vm.runtime.powerState == "poweredOn"


# --- CD-ROM, export, descriptor --------------------------------------------------------------------


def eject_cdrom(vm):
    cd = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualCdrom))
    cd.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
        connected=False, startConnected=False, allowGuestControl=True
    )
    cd.backing = vim.vm.device.VirtualCdrom.RemotePassthroughBackingInfo(deviceName="", exclusive=False)
    spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=cd)])
    WaitForTask(vm.ReconfigVM_Task(spec))
    return next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualCdrom))


def test_cdrom_edit_ejects_media(vcsim_factory):
    vm = find_vm(vcsim_factory().connect(), TWO_DISK_VM)
    before = vm.config.changeVersion
    assert before
    cd = eject_cdrom(vm)
    assert cd.key == 3000
    assert not cd.connectable.connected and not cd.connectable.startConnected
    assert isinstance(cd.backing, vim.vm.device.VirtualCdrom.RemotePassthroughBackingInfo)
    assert vm.config.changeVersion != before  # every reconfigure gets a new change version
    with pytest.raises(vim.fault.ConcurrentAccess):  # a spec made from stale config is refused
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="x", changeVersion=before)))
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="x", changeVersion=vm.config.changeVersion)))
    assert vm.config.annotation == "x"


def test_export_streams_two_stream_optimized_disks(vcsim_factory, tmp_path):
    sim = vcsim_factory()
    si = sim.connect()
    vm = find_vm(si, TWO_DISK_VM)
    with pytest.raises(vim.fault.InvalidPowerState):
        vm.ExportVm()  # vSphere exports powered-off VMs only
    WaitForTask(vm.PowerOffVM_Task())
    lease = vm.ExportVm()
    assert lease.state in ("initializing", "ready")
    wait_until(lambda: lease.state == "ready", what="lease ready")
    info = lease.info
    assert info.leaseTimeout == 300
    disks = [du for du in info.deviceUrl if du.disk]
    assert [du.targetId for du in disks] == ["disk-0.vmdk", "disk-1.vmdk"]
    assert info.totalDiskCapacityInKB == sum(
        d.capacityInKB for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)
    )
    served = [default_disks()["boot"], default_disks()["data"]]
    for du, source in zip(disks, served, strict=True):
        status, headers, body, error = download(sim, url_of(sim, du), si._stub.cookie)
        assert status == 200 and error is None
        assert "Content-Length" not in headers
        assert headers.get("Transfer-Encoding") == "chunked"
        out = tmp_path / du.targetId
        out.write_bytes(body)
        info_json = qemu_info(out)
        assert info_json["format"] == "vmdk"
        assert info_json["format-specific"]["data"]["create-type"] == "streamOptimized"
        assert is_stream_optimized(out)
        assert body == source.read_bytes()
        lease.HttpNfcLeaseProgress(50)
    # the ISO still attached is part of the export too (disk=False), as in vSphere
    assert [du.targetId for du in info.deviceUrl if not du.disk] == ["tools.iso"]
    lease.HttpNfcLeaseProgress(100)
    lease.HttpNfcLeaseComplete()
    status = download(sim, url_of(sim, disks[0]), si._stub.cookie)[0]
    assert status == 404  # the lease is over


def test_export_of_a_raw_image_round_trips(vcsim_factory, tmp_path):
    raw = tmp_path / "guest.raw"
    with open(raw, "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(300 << 10))
    uuid = "4212a0f1-0000-4000-8000-00000000abcd"
    sim = vcsim_factory(config={"vms": [disk_vm("from-raw", raw, power="poweredOff", firmware="efi", uuid=uuid)]})
    si = sim.connect()
    vm = find_vm(si, "from-raw")
    assert vm.config.uuid == uuid and vm.config.firmware == "efi"
    disk = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
    assert disk.capacityInKB == 3 << 10  # the image's virtual size
    lease = ready_lease(vm)
    (du,) = lease.info.deviceUrl
    status, _headers, body, error = download(sim, url_of(sim, du), si._stub.cookie)
    assert status == 200 and error is None
    (tmp_path / "out.vmdk").write_bytes(body)
    subprocess.run(
        ["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(tmp_path / "out.vmdk"), str(tmp_path / "back.raw")],
        check=True,
    )
    assert (tmp_path / "back.raw").read_bytes() == raw.read_bytes()
    lease.HttpNfcLeaseComplete()


def test_download_needs_the_lease_sessions_cookie(vcsim_factory):
    sim = vcsim_factory()
    owner, other = sim.connect(), sim.connect()
    vm = find_vm(owner, "DC0_H0_VM0")
    ensure_off(vm)
    lease = ready_lease(vm)
    url = url_of(sim, lease.info.deviceUrl[0])
    assert download(sim, url)[0] == 403
    assert download(sim, url, other._stub.cookie)[0] == 403
    assert download(sim, url, 'vmware_soap_session="not-a-session"')[0] == 403
    status, _headers, body, _error = download(sim, url, owner._stub.cookie)
    assert status == 200 and body[:4] == b"KDMV"
    cookie = owner._stub.cookie
    Disconnect(owner)
    assert download(sim, url, cookie)[0] == 403  # logged out


def test_lease_expires_without_progress(vcsim_factory):
    sim = vcsim_factory(lease_timeout=2)
    si = sim.connect()
    vm = find_vm(si, "DC0_H0_VM0")
    ensure_off(vm)
    lease = ready_lease(vm)
    assert lease.info.leaseTimeout == 2
    url = url_of(sim, lease.info.deviceUrl[0])
    wait_until(lambda: lease.state != "ready", what="lease timeout")
    assert lease.state == "error"
    assert isinstance(lease.error, vim.fault.Timedout)
    assert download(sim, url, si._stub.cookie)[0] == 404
    with pytest.raises(vim.fault.Timedout):
        lease.HttpNfcLeaseProgress(10)
    with pytest.raises(vim.fault.Timedout):
        lease.HttpNfcLeaseComplete()
    WaitForTask(vm.PowerOnVM_Task())  # the failed lease no longer holds the VM


def test_progress_keeps_the_lease_alive_beyond_its_timeout(vcsim_factory):
    sim = vcsim_factory(lease_timeout=2)
    si = sim.connect()
    vm = find_vm(si, "DC0_H0_VM0")
    ensure_off(vm)
    lease = ready_lease(vm)
    end = time.monotonic() + 5  # 2.5 timeouts
    percent = 0
    while time.monotonic() < end:
        percent = min(percent + 5, 99)
        lease.HttpNfcLeaseProgress(percent)
        time.sleep(0.5)
    assert lease.state == "ready"
    assert lease.transferProgress == percent
    status, _headers, _body, error = download(sim, url_of(sim, lease.info.deviceUrl[0]), si._stub.cookie)
    assert status == 200 and error is None
    lease.HttpNfcLeaseComplete()


def test_lease_timeout_cuts_a_running_download(vcsim_factory):
    sim = vcsim_factory(lease_timeout=2, rate_limit=100_000)  # ~4.6 s for the 460 KB disk
    si = sim.connect()
    vm = find_vm(si, "DC0_H0_VM0")
    ensure_off(vm)
    lease = ready_lease(vm)
    status, _headers, body, error = download(sim, url_of(sim, lease.info.deviceUrl[0]), si._stub.cookie)
    assert status == 200
    assert error is not None  # connection dropped mid-stream, no terminating chunk
    assert 0 < len(body) < default_disks()["boot"].stat().st_size
    assert lease.state == "error"


def test_abort_ends_the_lease(vcsim_factory):
    sim = vcsim_factory()
    si = sim.connect()
    vm = find_vm(si, "DC0_H0_VM0")
    ensure_off(vm)
    lease = ready_lease(vm)
    url = url_of(sim, lease.info.deviceUrl[0])
    with pytest.raises(vim.fault.InvalidState):  # no power-on while the export lease is open
        WaitForTask(vm.PowerOnVM_Task())
    lease.HttpNfcLeaseAbort()
    assert download(sim, url, si._stub.cookie)[0] == 404
    with pytest.raises(vmodl.fault.ManagedObjectNotFound):
        lease.HttpNfcLeaseProgress(10)
    WaitForTask(vm.PowerOnVM_Task())
    assert vm.runtime.powerState == "poweredOn"


def test_rate_limit_fault(vcsim_factory):
    sim = vcsim_factory()
    si = sim.connect()
    vm = find_vm(si, "DC0_H0_VM0")
    ensure_off(vm)
    lease = ready_lease(vm)
    rate = 400_000
    assert sim.set_faults(rate_limit=rate)["rate_limit"] == rate
    size = default_disks()["boot"].stat().st_size
    started = time.monotonic()
    status, _headers, body, error = download(sim, url_of(sim, lease.info.deviceUrl[0]), si._stub.cookie)
    elapsed = time.monotonic() - started
    assert status == 200 and error is None and len(body) == size
    # a lower bound only: the server cannot send faster than the limit (minus its first chunk)
    assert elapsed >= (size - rate // 10) / rate
    assert sim.set_faults(rate_limit=None)["rate_limit"] == 0
    lease.HttpNfcLeaseComplete()


def test_cut_after_fault(vcsim_factory):
    sim = vcsim_factory(cut_after=100_000)
    si = sim.connect()
    vm = find_vm(si, "DC0_H0_VM0")
    ensure_off(vm)
    lease = ready_lease(vm)
    url = url_of(sim, lease.info.deviceUrl[0])
    status, _headers, body, error = download(sim, url, si._stub.cookie)
    assert status == 200 and error is not None and len(body) == 100_000
    # changed at run time: cut only the next download, after 1000 bytes
    sim.set_faults(cut_after=1000, cut_count=1)
    assert len(download(sim, url, si._stub.cookie)[2]) == 1000
    assert sim.faults()["cut_after"] == 0
    status, _headers, body, error = download(sim, url, si._stub.cookie)
    assert error is None and len(body) == default_disks()["boot"].stat().st_size
    with pytest.raises(VcsimError, match="lease_timeout must be > 0"):
        sim.set_faults(lease_timeout=0)
    lease.HttpNfcLeaseComplete()


def descriptor(si, vm, ovf_files=()):
    cdp = vim.OvfManager.CreateDescriptorParams(
        name=vm.name, description="exported by a test", ovfFiles=list(ovf_files)
    )
    res = si.content.ovfManager.CreateDescriptor(obj=vm, cdp=cdp)
    assert not res.error
    return ET.fromstring(res.ovfDescriptor)  # noqa: S314 - our own simulator's output


def test_create_descriptor(vcsim_factory, tmp_path):
    sim = vcsim_factory(
        config={
            "vms": [
                {
                    "name": "efi-vm",
                    "firmware": "efi",
                    "guest_id": "rhel9_64Guest",
                    "power": "poweredOff",
                    "disks": [{"file": str(default_disks()["boot"])}, {"file": str(default_disks()["data"])}],
                    "cdrom": TOOLS_ISO,
                }
            ]
        }
    )
    si = sim.connect()
    vm = find_vm(si, "efi-vm")
    lease = ready_lease(vm)
    ovf_files = []
    for du in lease.info.deviceUrl:
        body = download(sim, url_of(sim, du), si._stub.cookie)[2]
        ovf_files.append(vim.OvfManager.OvfFile(deviceId=du.key, path=du.targetId, size=len(body)))
    lease.HttpNfcLeaseComplete()

    root = descriptor(si, vm, ovf_files)
    files = {f.get(f"{OVF}href"): int(f.get(f"{OVF}size")) for f in root.iter(f"{OVF}File")}
    assert files == {f.path: f.size for f in ovf_files}
    assert files["disk-0.vmdk"] == default_disks()["boot"].stat().st_size
    assert "tools.iso" in files  # media not ejected: the ISO rides along, as in vSphere
    os_section = next(root.iter(f"{OVF}OperatingSystemSection"))
    assert os_section.get(f"{VMW}osType") == "rhel9_64Guest"
    firmware = [c for c in root.iter(f"{VMW}Config") if c.get(f"{VMW}key") == "firmware"]
    assert [c.get(f"{VMW}value") for c in firmware] == ["efi"]
    caps = [int(d.get(f"{OVF}capacity")) for d in root.iter(f"{OVF}Disk")]
    assert caps == [d.capacityInKB for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    assert {i.findtext(f"{RASD}ResourceType") for i in root.iter(f"{OVF}Item")} >= {"6", "17", "15", "10"}

    eject_cdrom(vm)
    root = descriptor(si, vm)
    hrefs = [f.get(f"{OVF}href") for f in root.iter(f"{OVF}File")]
    assert hrefs == ["disk-0.vmdk", "disk-1.vmdk"]
    assert all(f.get(f"{OVF}size") is None for f in root.iter(f"{OVF}File"))  # sizes unknown without ovfFiles
    assert not any(i.findtext(f"{RASD}HostResource", "").startswith("ovf:/file/") for i in root.iter(f"{OVF}Item"))
    lease = ready_lease(vm)
    assert [du.targetId for du in lease.info.deviceUrl] == ["disk-0.vmdk", "disk-1.vmdk"]
    lease.HttpNfcLeaseAbort()


def test_bios_descriptor_has_no_firmware_config(vcsim):
    si = vcsim.connect()
    root = descriptor(si, find_vm(si, "DC0_C0_RP0_VM0"))
    assert not [c for c in root.iter(f"{VMW}Config") if c.get(f"{VMW}key") == "firmware"]


# --- launcher ------------------------------------------------------------------------------------


def test_stop_leaves_nothing_behind():
    sim = Vcsim(defaults=False).start()
    pid, workdir = sim.proc.pid, sim.workdir
    sim.stop()
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_simulator_exits_when_its_parent_dies(tmp_path):
    code = (
        "import sys, time; from tests.simulators.vcsim.launcher import Vcsim; "
        "s = Vcsim(defaults=False).start(); print(s.proc.pid, s.workdir, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pid, workdir = parent.stdout.readline().split()
        pid = int(pid)
    finally:
        parent.kill()  # no cleanup code runs in the parent
        parent.wait()
        parent.stdout.close()

    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, what=f"vcsim {pid} to exit after its parent died")
    assert not os.path.exists(workdir)  # it removed its datastores, config and log


def test_cli_prints_the_env_and_stops_on_sigterm(tmp_path):
    cfg = tmp_path / "vms.json"
    cfg.write_text(json.dumps({"vms": [{"name": "by-hand", "disks": [{"capacity_mb": 4}]}]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.simulators.vcsim.launcher", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        env = {}
        while len(env) < 5:
            line = proc.stdout.readline()
            assert line, "launcher exited early"
            if line.startswith("export "):
                key, _sep, value = line[len("export ") :].strip().partition("=")
                env[key] = value
        si = SmartConnect(
            host=env["VMWARE_HOST"],
            port=int(env["VMWARE_PORT"]),
            user=env["VMWARE_USER"],
            pwd=env["VMWARE_PASSWORD"],
            disableSslCertValidation=True,
        )
        assert find_vm(si, "by-hand") and find_vm(si, TWO_DISK_VM)
        Disconnect(si)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        proc.stdout.close()
