#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: guest_grub_default
short_description: Make a Linux guest's stock kernel GRUB's default boot entry
version_added: 0.1.0
description:
  - EC2 VM Import only accepts guests that boot the distribution's own kernel. A guest may also carry a custom or
    newer kernel that GRUB lists first; this module makes the stock kernel the default, the distribution's way.
  - "C(grub_d) style (Debian, Ubuntu): writes C(GRUB_DEFAULT) to C(/etc/default/grub.d/90-esxi2ami-default.cfg):
    C(0) when grub-mkconfig lists the stock kernel first (it is the newest installed), otherwise the menu path
    C(Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux <version>) (the title alone when the guest
    sets C(GRUB_DISABLE_SUBMENU=y)). The caller regenerates
    C(grub.cfg) (C(update-grub)) when the module reports a change."
  - "C(grubby) style (RHEL, CentOS Stream, Rocky, Alma, Oracle Linux with BootLoaderSpec entries): runs
    C(grubby --set-default /boot/vmlinuz-<version>) when C(grubby --default-kernel) names another kernel."
author:
  - esxi2ami.migrate maintainers (@esxi2ami)
options:
  kernel_version:
    description: Version of the stock kernel, as in C(/boot/vmlinuz-<version>), for example C(6.1.0-18-amd64).
    type: str
    required: true
  style:
    description:
      - How the default is set. V(auto) picks V(grubby) when C(grubby) and C(/boot/loader/entries) exist, else
        V(grub_d).
    type: str
    choices: [auto, grub_d, grubby]
    default: auto
  distributor:
    description:
      - C(GRUB_DISTRIBUTOR) of the guest (C(Debian), C(Ubuntu)...), which grub-mkconfig puts in menu titles. A plain
        C(GRUB_DISTRIBUTOR=...) value in the guest's GRUB settings takes precedence (Debian's default there is a
        command, C(lsb_release -i -s || echo Debian), which this option stands for).
    type: str
    default: Debian
  root:
    description: Root directory of the guest's file system (C(grub_d) style only).
    type: path
    default: /
extends_documentation_fragment:
  - esxi2ami.migrate.attributes
  - esxi2ami.migrate.attributes.check_mode_full
  - esxi2ami.migrate.attributes.diff_mode_full
  - esxi2ami.migrate.attributes.idempotent
"""

EXAMPLES = r"""
- name: Boot the stock Debian kernel by default
  esxi2ami.migrate.guest_grub_default:
    kernel_version: 6.1.0-18-amd64
    distributor: Debian
  become: true
  register: grub_default

- name: Regenerate grub.cfg when the default changed
  ansible.builtin.command: update-grub
  when: grub_default.changed
  changed_when: true
"""

RETURN = r"""
style:
  description: The style used.
  returned: always
  type: str
  sample: grub_d
default:
  description: The C(GRUB_DEFAULT) value (C(grub_d)) or the kernel path (C(grubby)) now in force.
  returned: always
  type: str
  sample: "Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-18-amd64"
kernels:
  description: Kernel versions found in C(/boot), newest first (GRUB's order).
  returned: always
  type: list
  elements: str
  sample: ["6.5.0-custom", "6.1.0-18-amd64"]
path:
  description: The drop-in file written (C(grub_d) style).
  returned: when style is grub_d
  type: str
  sample: /etc/default/grub.d/90-esxi2ami-default.cfg
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.esxi2ami.migrate.plugins.module_utils._guest_boot import (  # noqa: E402
    grub_default_dropin,
    grub_default_entry,
    grub_settings,
    installed_kernels,
)

DROPIN = "/etc/default/grub.d/90-esxi2ami-default.cfg"


def _grubby(module, version):
    grubby = module.get_bin_path("grubby", required=True)
    wanted = "/boot/vmlinuz-%s" % version
    if not os.path.exists(wanted):
        module.fail_json(msg="%s does not exist: install the stock kernel package first" % wanted)
    rc, out, err = module.run_command([grubby, "--default-kernel"])
    current = out.strip() if rc == 0 else ""
    result = dict(style="grubby", default=wanted, kernels=installed_kernels("/"), changed=current != wanted)
    if module._diff:
        result["diff"] = dict(before="default kernel: %s\n" % current, after="default kernel: %s\n" % wanted)
    if result["changed"] and not module.check_mode:
        rc, out, err = module.run_command([grubby, "--set-default", wanted])
        if rc != 0:
            module.fail_json(msg="grubby --set-default %s failed: %s" % (wanted, err or out), **result)
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            kernel_version=dict(type="str", required=True),
            style=dict(type="str", default="auto", choices=["auto", "grub_d", "grubby"]),
            distributor=dict(type="str", default="Debian"),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    version = module.params["kernel_version"]
    root = module.params["root"]
    style = module.params["style"]
    if style == "auto":
        bls = os.path.isdir(os.path.join(root, "boot/loader/entries"))
        style = "grubby" if bls and root == "/" and module.get_bin_path("grubby") else "grub_d"
    if style == "grubby":
        _grubby(module, version)
    kernels = installed_kernels(root)
    settings = grub_settings(root)
    distributor = settings.get("GRUB_DISTRIBUTOR") or module.params["distributor"]
    submenu = settings.get("GRUB_DISABLE_SUBMENU", "").lower() not in ("y", "yes", "true")
    try:
        entry = grub_default_entry(kernels, version, distributor, submenu=submenu)
    except ValueError as exc:
        module.fail_json(msg="%s: install the stock kernel package first" % exc, kernels=kernels)
    path = os.path.join(root, DROPIN.lstrip("/"))
    wanted = grub_default_dropin(entry)
    current = ""
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as handle:
            current = handle.read()
    result = dict(style="grub_d", default=entry, kernels=kernels, path=DROPIN, changed=current != wanted)
    if module._diff:
        result["diff"] = dict(before_header=DROPIN, after_header=DROPIN, before=current, after=wanted)
    if result["changed"] and not module.check_mode:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = path + ".esxi2ami-tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(wanted)
        os.chmod(tmp, 0o644)
        module.atomic_move(tmp, path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
