"""The vSphere client layer without a server: TLS defaults, fault messages, refused connections."""

import socket
import ssl

import pytest
from pyVmomi import vim

from ansible_collections.esxi2ami.migrate.plugins.module_utils import vsphere


def test_tls_verification_is_on_unless_disabled():
    strict = vsphere.ssl_context(True)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    lax = vsphere.ssl_context(False)
    assert lax.verify_mode == ssl.CERT_NONE and not lax.check_hostname


def test_fault_message_prefers_the_vsphere_text():
    fault = vim.fault.InvalidPowerState(msg="The attempted operation cannot be performed in the current state.")
    assert vsphere.fault_message(fault) == "The attempted operation cannot be performed in the current state."
    assert vsphere.fault_message(ValueError("plain")) == "plain"
    assert vsphere.fault_message(RuntimeError()) == "RuntimeError"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_names_the_server():
    port = _free_port()
    with pytest.raises(vsphere.VSphereError, match=r"cannot connect to 127\.0\.0\.1:%d" % port):
        vsphere.VSphereClient("127.0.0.1", "user", "pass", port=port)


def test_missing_hostname_says_how_to_set_it():
    with pytest.raises(vsphere.VSphereError, match="VMWARE_HOST"):
        vsphere.VSphereClient("", "user", "pass")
