#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: guest_network
short_description: Replace a Linux guest's static, NIC-pinned network configuration with DHCP on any Ethernet NIC
version_added: 0.1.0
description:
  - Prepares a Linux guest that leaves VMware for EC2, where the NIC has another name (C(ens5) or C(eth0) instead of
    C(ens192)), another MAC address, and gets its address from DHCP.
  - "ifupdown: every C(iface) stanza of a physical Ethernet NIC (C(en*), C(eth*)) is removed with its C(auto) and
    C(allow-*) mentions, and one stanza C(auto /en*=esxi2ami-dhcp /eth*=esxi2ami-dhcp) / C(iface esxi2ami-dhcp inet
    dhcp) is added, which ifupdown applies to whatever Ethernet NIC the kernel names."
  - "netplan: every ethernet gets C(dhcp4: true), C(match: {name: e*}), and loses static addresses, gateways, routes,
    nameservers and C(set-name)."
  - "NetworkManager keyfiles and ifcfg files: Ethernet profiles switch to DHCP (C(method=auto), C(BOOTPROTO=dhcp)) and
    lose static addresses, gateway, DNS and their interface-name or MAC binding."
  - "systemd-networkd: C(.network) files matching an Ethernet NIC by name or MAC match C(en* eth*) and use
    C(DHCP=ipv4); MAC-pinned C(.link) files are removed."
  - Persistent-net udev rules (C(/etc/udev/rules.d/*persistent-net*.rules)) are removed.
  - The first original of every file changed or removed is kept under O(backup_dir), with its path.
  - The module only writes files; it never restarts networking (that would cut the SSH connection of the run).
author:
  - esxi2ami.migrate maintainers (@esxi2ami)
options:
  root:
    description:
      - Root directory of the system to change. V(/) for the running guest; the path of a mounted image or a
        copy of its files otherwise.
    type: path
    default: /
  backup_dir:
    description:
      - Directory (inside O(root)) that receives the original of every file the module changes or removes.
    type: path
    default: /var/backups/esxi2ami
extends_documentation_fragment:
  - esxi2ami.migrate.attributes
  - esxi2ami.migrate.attributes.check_mode_full
  - esxi2ami.migrate.attributes.diff_mode_full
  - esxi2ami.migrate.attributes.idempotent
notes:
  - Bonds, bridges and VLANs are not converted; static ones are reported in RV(warnings_found) for review.
  - Netplan files are rewritten with PyYAML, which drops comments; the original is in O(backup_dir).
"""

EXAMPLES = r"""
- name: Make the guest take DHCP on whatever NIC EC2 gives it
  esxi2ami.migrate.guest_network:
  become: true

- name: Prepare a guest disk mounted on the controller
  esxi2ami.migrate.guest_network:
    root: /mnt/guest
    backup_dir: /var/backups/esxi2ami
"""

RETURN = r"""
changes:
  description: Every file the module changed (or would change in check mode), with the reasons.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Path of the file on the guest.
      type: str
      sample: /etc/network/interfaces
    action:
      description: C(rewrite) or C(remove).
      type: str
      sample: rewrite
    reasons:
      description: What was changed in the file.
      type: list
      elements: str
      sample: ["iface ens192 inet static removed (pinned to the vSphere NIC name)"]
  sample: [{"path": "/etc/network/interfaces", "action": "rewrite", "reasons": ["iface ens192 inet static removed"]}]
backups:
  description: Paths of the backups of the originals (guest paths). Empty in check mode.
  returned: always
  type: list
  elements: str
  sample: ["/var/backups/esxi2ami/etc/network/interfaces"]
warnings_found:
  description: Configuration the module left alone that may still stop the guest from getting an address on EC2.
  returned: always
  type: list
  elements: str
  sample: ["/etc/network/interfaces: iface br0 is static and not a plain Ethernet NIC: left as is, review it"]
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.esxi2ami.migrate.plugins.module_utils._guest_network import (  # noqa: E402
    HAS_YAML,
    NetworkConfigError,
    apply_plan,
    plan_network,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", default="/"),
            backup_dir=dict(type="path", default="/var/backups/esxi2ami"),
        ),
        supports_check_mode=True,
    )
    root = module.params["root"]
    if not os.path.isdir(root):
        module.fail_json(msg="root %s is not a directory: give the root of the guest's file system" % root)
    try:
        plan = plan_network(root)
    except NetworkConfigError as exc:
        module.fail_json(msg=str(exc), has_yaml=HAS_YAML)
    warnings_found = ["%s: %s" % (c.path, r) for c in plan if c.action == "keep" for r in c.reasons]
    plan = [c for c in plan if c.action != "keep"]
    result = dict(
        changed=bool(plan),
        changes=[c.as_dict() for c in plan],
        backups=[],
        warnings_found=warnings_found,
    )
    if module._diff:
        result["diff"] = [
            dict(before_header=c.path, after_header=c.path, before=c.before, after=c.after or "") for c in plan
        ]
    if plan and not module.check_mode:
        try:
            result["backups"] = apply_plan(plan, root=root, backup_dir=module.params["backup_dir"])
        except (IOError, OSError) as exc:
            module.fail_json(msg="writing the network configuration failed: %s" % exc, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
