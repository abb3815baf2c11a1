# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # vSphere connection options, shared by every module that talks to vCenter or ESXi.
    # The environment variables are the ones vmware.vmware and AWX's "VMware vCenter" credential use.
    DOCUMENTATION = r"""
options:
  hostname:
    description:
      - The vCenter or ESXi server to connect to.
      - If not set, the value of the E(VMWARE_HOST) environment variable is used.
    type: str
    required: true
  username:
    description:
      - The user name to log in with.
      - If not set, the value of the E(VMWARE_USER) environment variable is used.
    type: str
    required: true
    aliases: [user, admin]
  password:
    description:
      - The password of O(username).
      - If not set, the value of the E(VMWARE_PASSWORD) environment variable is used.
    type: str
    required: true
    aliases: [pass, pwd]
  port:
    description:
      - The HTTPS port of the server.
      - If not set, the value of the E(VMWARE_PORT) environment variable is used, else 443.
    type: int
    default: 443
  validate_certs:
    description:
      - Whether to verify the server's TLS certificate, for the API connection and for every disk download.
      - Set to V(false) only for lab servers with self-signed certificates.
      - If not set, the value of the E(VMWARE_VALIDATE_CERTS) environment variable is used, else V(true).
    type: bool
    default: true
"""
