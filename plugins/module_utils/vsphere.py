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
import ssl
import time

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
                raise VSphereError("no VM with moid %r" % moid) from None
            return vm
        if uuid:
            vm = self.content.searchIndex.FindByUuid(None, uuid, True, False) or self.content.searchIndex.FindByUuid(
                None, uuid, True, True
            )
            if vm is None:
                raise VSphereError("no VM with uuid %r" % uuid)
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
            raise VSphereError("no VM named %r%s" % (name, " in folder %r" % folder if folder else ""))
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
