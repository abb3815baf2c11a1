# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PRIVATE: vSphere client layer for esxi2ami.migrate (no Ansible imports).

Connects with pyVmomi, finds VMs, runs and waits for tasks. Modules adapt this layer; it raises
VSphereError (one exception type) and never prints or exits.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import http.client
import ssl
import threading
import time
from urllib.parse import urlsplit, urlunsplit

try:
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim, vmodl

    HAS_PYVMOMI = True
    PYVMOMI_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by the module
    HAS_PYVMOMI = False
    PYVMOMI_IMPORT_ERROR = exc


class VSphereError(Exception):
    """Any failure talking to vSphere, with a message meant for the user."""


def ssl_context(validate_certs):
    """The TLS context for the API and for disk downloads: verifying unless the user opted out."""
    if validate_certs:
        return ssl.create_default_context()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fault_message(exc):
    """The human part of a pyVmomi fault (vmodl.MethodFault.msg) or of any other exception."""
    msg = getattr(exc, "msg", None)
    if msg:
        return str(msg)
    return str(exc) or type(exc).__name__


class VSphereClient(object):
    """A logged-in vSphere session. Use as a context manager, or call close()."""

    def __init__(self, hostname, username, password, port=443, validate_certs=True):
        if not HAS_PYVMOMI:
            raise VSphereError("pyVmomi is required: pip install 'pyvmomi>=8.0.1.0' (%s)" % PYVMOMI_IMPORT_ERROR)
        if not hostname:
            raise VSphereError("hostname is required: set it or the VMWARE_HOST environment variable")
        self.hostname = hostname
        self.port = int(port)
        self.validate_certs = bool(validate_certs)
        self.ssl_context = ssl_context(self.validate_certs)
        try:
            self.si = SmartConnect(
                host=hostname, user=username, pwd=password, port=self.port, sslContext=self.ssl_context
            )
        except ssl.SSLError as exc:
            raise VSphereError(
                "TLS verification of %s:%d failed (%s). Install the server's CA certificate, or set "
                "validate_certs: false for a lab server." % (hostname, self.port, exc)
            ) from None
        except vim.fault.InvalidLogin as exc:
            raise VSphereError(
                "login to %s:%d as %r failed: %s" % (hostname, self.port, username, fault_message(exc))
            ) from None
        except (OSError, vmodl.MethodFault) as exc:
            raise VSphereError("cannot connect to %s:%d: %s" % (hostname, self.port, fault_message(exc))) from None
        self.content = self.si.RetrieveContent()

    # -- session -----------------------------------------------------------------------------------
    @property
    def api_version(self):
        return self.content.about.apiVersion

    @property
    def session_cookie(self):
        """The `vmware_soap_session=...` cookie, needed for NFC (disk) downloads of this session's leases."""
        return self.si._stub.cookie

    def close(self):
        if self.si is not None:
            # Logging out of a dead session must not hide the error that killed it.
            with contextlib.suppress(Exception):
                Disconnect(self.si)
            self.si = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- inventory ---------------------------------------------------------------------------------
    def _datacenter(self, name):
        for dc in self.content.rootFolder.childEntity:
            if isinstance(dc, vim.Datacenter) and dc.name == name:
                return dc
        raise VSphereError(
            "datacenter %r not found; known: %s"
            % (name, ", ".join(sorted(c.name for c in self.content.rootFolder.childEntity)) or "none")
        )

    def _all_vms(self, root):
        view = self.content.viewManager.CreateContainerView(root, [vim.VirtualMachine], True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    @staticmethod
    def inventory_path(obj):
        parts = []
        while obj is not None and not isinstance(obj, vim.Datacenter):
            parts.append(obj.name)
            obj = obj.parent
        if obj is not None:
            parts.append(obj.name)
        return "/" + "/".join(reversed(parts))

    def find_vm(self, name=None, uuid=None, moid=None, datacenter=None, folder=None):
        """Exactly one VM by name (optionally within a datacenter/folder), BIOS uuid or managed object id."""
        if sum(1 for x in (name, uuid, moid) if x) != 1:
            raise VSphereError("give exactly one of name, uuid or moid to identify the VM")
        root = self._datacenter(datacenter).vmFolder if datacenter else self.content.rootFolder
        if moid:
            vm = vim.VirtualMachine(moid, self.si._stub)
            try:
                vm.name  # noqa: B018 - fetch a property to prove the object exists
            except vmodl.fault.ManagedObjectNotFound:
                raise VSphereError(
                    "no VM with moid %r: check the id (vm-<number>), or identify the VM by name" % moid
                ) from None
            return vm
        if uuid:
            vm = self.content.searchIndex.FindByUuid(None, uuid, True, False) or self.content.searchIndex.FindByUuid(
                None, uuid, True, True
            )
            if vm is None:
                raise VSphereError(
                    "no VM with uuid %r: check the BIOS or instance uuid, or identify the VM by name" % uuid
                )
            return vm
        matches = [vm for vm in self._all_vms(root) if vm.name == name]
        if folder:
            want = "/" + folder.strip("/")
            matches = [
                vm
                for vm in matches
                if want in self.inventory_path(vm.parent) + "/" or self.inventory_path(vm.parent).endswith(want)
            ]
        if not matches:
            raise VSphereError(
                "no VM named %r%s: check the name (exact match, case and spaces count)%s, or identify the VM by uuid "
                "or moid" % (name, " in folder %r" % folder if folder else "", " and the folder" if folder else "")
            )
        if len(matches) > 1:
            raise VSphereError(
                "%d VMs are named %r: %s. Set datacenter/folder, or use uuid or moid."
                % (
                    len(matches),
                    name,
                    "; ".join(
                        "%s (moid %s, uuid %s)"
                        % (self.inventory_path(vm), vm._moId, vm.config.uuid if vm.config else "?")
                        for vm in matches
                    ),
                )
            )
        return matches[0]

    # -- tasks -------------------------------------------------------------------------------------
    @staticmethod
    def wait_for_task(task, timeout=3600, poll=0.2, what="task"):
        """Wait for a vSphere task; raise VSphereError with the task's fault message on error."""
        deadline = time.monotonic() + timeout
        while True:
            state = task.info.state
            if state == vim.TaskInfo.State.success:
                return task.info.result
            if state == vim.TaskInfo.State.error:
                raise VSphereError("%s failed: %s" % (what, fault_message(task.info.error)))
            if time.monotonic() > deadline:
                raise VSphereError("%s did not finish within %ds (state %s)" % (what, timeout, state))
            time.sleep(poll)

    # -- power -------------------------------------------------------------------------------------
    def power_off(self, vm, mode="graceful", timeout=300, poll=1.0):
        """Power the VM off: ``graceful`` (guest shutdown via VMware Tools, then hard after ``timeout``), ``hard``,
        or ``never`` (fail when it is on). Returns what happened: {before, action, after, note}."""
        before = str(vm.runtime.powerState)
        result = {"before": before, "action": "none", "after": before, "note": None}
        if before == vim.VirtualMachinePowerState.poweredOff:
            return result
        if mode == "never":
            raise VSphereError(
                "VM %r is %s and power_off is never: shut it down first, or set power_off to graceful or hard"
                % (vm.name, before)
            )
        if mode == "graceful":
            tools = str(getattr(vm.guest, "toolsRunningStatus", None) or "")
            if before == vim.VirtualMachinePowerState.poweredOn and tools == "guestToolsRunning":
                try:
                    vm.ShutdownGuest()
                except vmodl.MethodFault as exc:
                    result["note"] = "guest shutdown refused (%s); powered off hard" % fault_message(exc)
                else:
                    deadline = time.monotonic() + timeout
                    while time.monotonic() < deadline:
                        if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOff:
                            result.update(action="shutdown", after="poweredOff")
                            return result
                        time.sleep(poll)
                    result["note"] = "the guest did not shut down within %ds; powered off hard" % timeout
            else:
                result["note"] = "VMware Tools not running (%s); powered off hard" % (tools or "unknown")
        self.wait_for_task(vm.PowerOffVM_Task(), timeout=600, what="powering off VM %r" % vm.name)
        result.update(action="poweroff" if mode == "hard" else "shutdown_then_poweroff", after="poweredOff")
        return result

    def power_on(self, vm):
        if vm.runtime.powerState != vim.VirtualMachinePowerState.poweredOn:
            self.wait_for_task(vm.PowerOnVM_Task(), timeout=600, what="powering on VM %r" % vm.name)

    # -- removable media ---------------------------------------------------------------------------
    @staticmethod
    def removable_media(vm):
        """CD-ROM and floppy drives that are connected, start connected or are backed by an image file."""
        found = []
        for dev in vm.config.hardware.device:
            if isinstance(dev, vim.vm.device.VirtualCdrom):
                kind = "cdrom"
            elif isinstance(dev, vim.vm.device.VirtualFloppy):
                kind = "floppy"
            else:
                continue
            backing = getattr(dev.backing, "fileName", None) or getattr(dev.backing, "deviceName", None) or ""
            conn = dev.connectable
            has_image = isinstance(
                dev.backing,
                (vim.vm.device.VirtualCdrom.IsoBackingInfo, vim.vm.device.VirtualFloppy.ImageBackingInfo),
            )
            connected = bool(conn and conn.connected)
            start_connected = bool(conn and conn.startConnected)
            found.append(
                {
                    "key": dev.key,
                    "label": dev.deviceInfo.label if dev.deviceInfo else "%s %d" % (kind, dev.key),
                    "type": kind,
                    "backing": backing,
                    "connected": connected,
                    "start_connected": start_connected,
                    "needs_eject": connected or start_connected or has_image,
                    "_device": dev,
                }
            )
        return found

    def eject_media(self, vm, check_mode=False):
        """Disconnect CD-ROM/floppy media (not connected, not start connected, no image). Returns what changed."""
        changes = []
        specs = []
        for media in self.removable_media(vm):
            dev = media.pop("_device")
            if not media.pop("needs_eject"):
                continue
            changes.append(media)
            if isinstance(dev, vim.vm.device.VirtualCdrom):
                dev.backing = vim.vm.device.VirtualCdrom.RemotePassthroughBackingInfo(deviceName="", exclusive=False)
            else:
                dev.backing = vim.vm.device.VirtualFloppy.RemoteDeviceBackingInfo(deviceName="")
            dev.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
                connected=False, startConnected=False, allowGuestControl=True
            )
            specs.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev))
        if specs and not check_mode:
            self.wait_for_task(
                vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=specs)),
                timeout=600,
                what="ejecting media from VM %r" % vm.name,
            )
        return changes

    @staticmethod
    def disks(vm):
        """Label and capacity (bytes) of each virtual disk, in device order."""
        out = []
        for dev in vm.config.hardware.device:
            if isinstance(dev, vim.vm.device.VirtualDisk):
                cap = dev.capacityInBytes or (dev.capacityInKB or 0) * 1024
                out.append({"label": dev.deviceInfo.label if dev.deviceInfo else str(dev.key), "capacity": cap})
        return out

    # -- export ------------------------------------------------------------------------------------
    def open_export_lease(self, vm, ready_timeout=600):
        try:
            lease = vm.ExportVm()
        except vmodl.MethodFault as exc:
            raise VSphereError("cannot export VM %r: %s" % (vm.name, fault_message(exc))) from None
        return ExportLease(lease, ready_timeout=ready_timeout)

    def nfc_url(self, url):
        """A lease's device URL with the '*' host replaced by the server we are connected to."""
        parts = urlsplit(url)
        host = parts.hostname or "*"
        if host == "*":
            name = "[%s]" % self.hostname if ":" in self.hostname else self.hostname
            netloc = "%s:%d" % (name, parts.port or self.port)
            parts = parts._replace(netloc=netloc)
        return urlunsplit(parts)

    def download(self, url, chunk_size=1 << 20, timeout=300):
        """Yield the bytes of an NFC device URL, with this session's cookie and the API's TLS verification."""
        return nfc_download(self.nfc_url(url), self.session_cookie, self.ssl_context, chunk_size, timeout)

    def create_descriptor(self, vm, name, files, description=""):
        """OvfManager.CreateDescriptor for ``vm``; files: [(device key, path in the OVA, size)]."""
        params = vim.OvfManager.CreateDescriptorParams(
            name=name,
            description=description,
            ovfFiles=[vim.OvfManager.OvfFile(deviceId=key, path=path, size=size) for key, path, size in files],
        )
        try:
            res = self.content.ovfManager.CreateDescriptor(obj=vm, cdp=params)
        except vmodl.MethodFault as exc:
            raise VSphereError("CreateDescriptor for VM %r failed: %s" % (vm.name, fault_message(exc))) from None
        if res.error:
            raise VSphereError(
                "CreateDescriptor for VM %r failed: %s" % (vm.name, "; ".join(fault_message(e) for e in res.error))
            )
        return res.ovfDescriptor


def nfc_download(url, cookie, context, chunk_size=1 << 20, timeout=300):
    """Yield the body of an NFC (disk) URL in chunks; raise VSphereError on anything short of the whole body.

    ``context`` is the TLS context of the API connection, so validate_certs covers downloads too.
    Proxies from the environment are not used: the disk goes straight from the host.
    """
    parts = urlsplit(url)
    # Name the file, not the whole URL: its path carries the lease's session-bound id.
    what = "%s from %s" % (parts.path.rsplit("/", 1)[-1], parts.netloc)
    if parts.scheme != "https":
        raise VSphereError("refusing to download %s over %s: only https is supported" % (what, parts.scheme))
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=context, timeout=timeout)
    path = parts.path + ("?" + parts.query if parts.query else "")
    done = 0
    try:
        conn.request("GET", path, headers={"Cookie": cookie, "Accept": "application/x-vnd.vmware-streamVmdk"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise VSphereError(
                "downloading %s failed: HTTP %d %s %s" % (what, resp.status, resp.reason, resp.read(300)[:300])
            )
        expected = resp.length
        while True:
            data = resp.read(chunk_size)
            if not data:
                break
            done += len(data)
            yield data
        if expected is not None and done < expected:
            raise VSphereError("download of %s ended after %d of %d bytes" % (what, done, expected))
    except ssl.SSLCertVerificationError as exc:
        raise VSphereError(
            "TLS verification of the disk download %s failed (%s); validate_certs applies to downloads too"
            % (what, exc.verify_message or exc)
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise VSphereError(
            "download of %s failed after %d bytes: %s" % (what, done, fault_message(exc) or type(exc).__name__)
        ) from None
    finally:
        conn.close()


SESSION_ENDED = "the vCenter session of this export ended (logged out, terminated by an administrator or expired)"


class ExportLease(object):
    """An HttpNfcLease from ExportVm: wait until ready, keep alive with real progress, complete or abort."""

    def __init__(self, lease, ready_timeout=600, poll=0.2):
        self.lease = lease
        deadline = time.monotonic() + ready_timeout
        while lease.state == vim.HttpNfcLease.State.initializing:
            if time.monotonic() > deadline:
                self.abort()
                raise VSphereError("the export lease was not ready within %ds" % ready_timeout)
            time.sleep(poll)
        if lease.state != vim.HttpNfcLease.State.ready:
            raise VSphereError("the export lease failed: %s" % self._lease_error())
        self.info = lease.info
        self.timeout = int(self.info.leaseTimeout or 300)
        self.device_urls = [du for du in self.info.deviceUrl if du.disk]
        self.capacity = int(self.info.totalDiskCapacityInKB or 0) * 1024
        self.bytes_done = 0
        self.total_estimate = self.capacity
        self.reports = 0
        self.error = None
        self.session_ended = False
        self.ended_on_server = False
        self.state = "ready"
        self._stop = threading.Event()
        self._thread = None

    def _lease_error(self):
        with contextlib.suppress(Exception):
            if self.lease.error is not None:
                return fault_message(self.lease.error)
        return "state %s" % self.lease.state

    @property
    def percent(self):
        if not self.total_estimate:
            return 0
        return max(0, min(99, int(100 * self.bytes_done / self.total_estimate)))

    def keepalive_interval(self):
        return max(0.5, min(60.0, self.timeout / 4.0))

    def start_keepalive(self, interval=None):
        """Report progress every ``interval`` s (<= 60, a quarter of the lease timeout) until complete/abort."""
        interval = interval or self.keepalive_interval()
        self._thread = threading.Thread(target=self._keepalive, args=(interval,), name="nfc-lease-keepalive")
        self._thread.daemon = True
        self._thread.start()

    def _keepalive(self, interval):
        while not self._stop.wait(interval):
            try:
                self.lease.HttpNfcLeaseProgress(percent=self.percent)
                self.reports += 1
            except Exception as exc:  # noqa: BLE001 - any failure ends keep-alive; the export checks .error
                self.error = self._lost(exc)
                return

    def _lost(self, exc):
        if isinstance(exc, vim.fault.NotAuthenticated):
            self.session_ended = True
            return VSphereError("%s, so the export lease could not be kept alive" % SESSION_ENDED)
        return VSphereError("the export lease was lost: %s" % fault_message(exc))

    def probe(self):
        """After a failure: the lease's own cause, when the server ended it (timeout, abort) or our session ended.

        None when the lease is still fine (the failure was elsewhere, e.g. a cut download or S3).
        """
        if self.error is not None:
            return self.error
        try:
            if self.lease.state == vim.HttpNfcLease.State.error:
                self.ended_on_server = True
                self.error = VSphereError("the export lease ended on the server: %s" % self._lease_error())
        except vim.fault.NotAuthenticated as exc:
            self.error = self._lost(exc)
        except vmodl.fault.ManagedObjectNotFound:
            self.ended_on_server = True
            self.error = VSphereError("the export lease is gone from the server (ended by someone else)")
        except Exception:  # noqa: BLE001, S110 - a probe; the original error is reported anyway
            pass
        return self.error

    @property
    def outcome(self):
        """What became of the lease, for failure messages."""
        if self.ended_on_server:
            return "already ended by vSphere"
        if self.state == "aborted":
            return "given back"
        if self.session_ended:
            return (
                "not given back (the session that owns it ended); vSphere releases it %ds after its last progress "
                "report" % self.timeout
            )
        return self.state

    def check(self):
        if self.error is not None:
            raise self.error

    def _stop_keepalive(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def complete(self):
        self._stop_keepalive()
        self.check()
        try:
            self.lease.HttpNfcLeaseProgress(percent=100)
            self.lease.HttpNfcLeaseComplete()
        except vmodl.MethodFault as exc:
            raise VSphereError("completing the export lease failed: %s" % fault_message(exc)) from None
        self.state = "done"

    def abort(self, reason=None):
        """Give the lease back (HttpNfcLeaseAbort). Never raises: it runs while another error is reported."""
        self._stop_keepalive()
        if self.state in ("done", "aborted", "abandoned"):
            return
        try:
            fault = vmodl.fault.SystemError(reason=reason or "export aborted", msg=reason or "export aborted")
            self.lease.HttpNfcLeaseAbort(fault)
        except vim.fault.NotAuthenticated:
            self.session_ended = True
            self.state = "abandoned"
            return
        except Exception:  # noqa: BLE001, S110 - ended already (timed out, gone): given back either way
            pass
        self.state = "aborted"


# Descriptor slot sizing: the largest file size the final descriptor can name (19 digits).
_MAX_SIZE_PLACEHOLDER = 9 * 10**18


def vm_facts(vm):
    cfg = vm.config
    modified = getattr(cfg, "modified", None)
    mtime = 0
    if modified is not None:
        with contextlib.suppress(Exception):
            mtime = max(0, int(modified.timestamp()))
    return {
        "name": vm.name,
        "moid": vm._moId,
        "uuid": cfg.uuid,
        "instance_uuid": getattr(cfg, "instanceUuid", None),
        "change_version": cfg.changeVersion or "",
        "power_state": str(vm.runtime.powerState),
        "guest_id": cfg.guestId,
        "firmware": getattr(cfg, "firmware", None),
        "mtime": mtime,
    }


def export_ova(client, vm, make_sink, progress=None, chunk_size=1 << 20, description="", outcome=None):
    """Export ``vm`` (powered off) as an OVA into the sink ``make_sink(head_size, estimate)`` returns.

    One pass: each disk streams from its NFC URL into the OVA writer while a keep-alive thread
    reports the real progress to the lease. On any failure the sink is aborted (no partial object
    or file) and the lease given back. ``progress(bytes_done, estimate)`` is called per chunk.
    Returns the writer's result (size, disks, the sink's fields) plus ``estimate``. On failure,
    ``outcome["lease"]`` (when a dict is given) says what became of the lease.
    """
    from ansible_collections.esxi2ami.migrate.plugins.module_utils.ova import (
        OvaError,
        OvaWriter,
        round_up,
        safe_file_name,
    )

    facts = vm_facts(vm)
    base = safe_file_name(vm.name)
    lease = client.open_export_lease(vm)
    sink = None
    try:
        devices = lease.device_urls
        if not devices:
            raise VSphereError("the export lease of VM %r offers no disks" % vm.name)
        names = ["%s-disk%d.vmdk" % (base, i + 1) for i in range(len(devices))]
        sizes = [du.fileSize or 0 for du in devices]
        estimate = sum(sizes) if all(sizes) else lease.capacity
        lease.total_estimate = estimate or lease.capacity
        # The descriptor's slot: what CreateDescriptor writes with the longest sizes, plus slack.
        widest = client.create_descriptor(
            vm, vm.name, [(du.key, names[i], _MAX_SIZE_PLACEHOLDER) for i, du in enumerate(devices)], description
        )
        reserve = round_up(len(widest.encode("utf-8")) + 256)
        head_size = OvaWriter.head_size_for(base + ".ovf", base + ".mf", names, reserve)
        sink = make_sink(head_size, max(estimate, lease.capacity))
        writer = OvaWriter(sink, base + ".ovf", base + ".mf", names, reserve, mtime=facts["mtime"])
        lease.start_keepalive()
        for i, du in enumerate(devices):
            writer.begin_disk(names[i])
            for data in client.download(du.url, chunk_size=chunk_size):
                writer.write(data)
                lease.bytes_done = writer.bytes_streamed
                lease.check()
                if progress is not None:
                    progress(writer.bytes_streamed, lease.total_estimate)
            writer.end_disk()
            lease.check()
        descriptor = client.create_descriptor(
            vm,
            vm.name,
            [(du.key, writer.disks[i].name, writer.disks[i].size) for i, du in enumerate(devices)],
            description,
        )
        result = writer.finish(descriptor)
        lease.complete()
    except BaseException as exc:
        cause = lease.probe()  # before the abort: a lease that timed out or a session that ended says so
        try:
            if sink is not None:
                sink.abort()
        finally:
            lease.abort(str(exc) or type(exc).__name__)
            if outcome is not None:
                outcome["lease"] = lease.outcome
        if cause is not None and cause is not exc and isinstance(exc, (VSphereError, OSError)):
            raise VSphereError("%s (%s)" % (cause, exc)) from None
        if isinstance(exc, OvaError):
            raise VSphereError(str(exc)) from None
        raise
    result["estimate"] = estimate
    result["lease_progress_reports"] = lease.reports
    result["bytes_written_locally"] = getattr(sink, "bytes_written", 0)
    return result
