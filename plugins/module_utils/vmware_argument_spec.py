# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PRIVATE: argument spec for the vSphere connection options (doc fragment esxi2ami.migrate.vmware)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import env_fallback


def vmware_argument_spec():
    return dict(
        hostname=dict(type="str", required=True, fallback=(env_fallback, ["VMWARE_HOST"])),
        username=dict(type="str", required=True, aliases=["user", "admin"], fallback=(env_fallback, ["VMWARE_USER"])),
        password=dict(
            type="str",
            required=True,
            aliases=["pass", "pwd"],
            no_log=True,
            fallback=(env_fallback, ["VMWARE_PASSWORD"]),
        ),
        port=dict(type="int", default=443, fallback=(env_fallback, ["VMWARE_PORT"])),
        validate_certs=dict(type="bool", default=True, fallback=(env_fallback, ["VMWARE_VALIDATE_CERTS"])),
    )


def connection_params(params):
    """The keyword arguments VSphereClient takes, picked from a module's params."""
    return {k: params[k] for k in ("hostname", "username", "password", "port", "validate_certs")}
