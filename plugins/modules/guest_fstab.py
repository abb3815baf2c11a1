#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: guest_fstab
short_description: Mount a Linux guest's file systems by UUID instead of device names
version_added: 0.1.0
description:
  - Disk names change when a VM moves from VMware to EC2 (C(/dev/sda1) becomes C(/dev/nvme0n1p1) or C(/dev/xvda1)).
    This module rewrites every fstab entry that names a disk device (C(/dev/sdX), C(/dev/vdX), C(/dev/xvdX),
    C(/dev/hdX), C(/dev/nvmeXnY), C(/dev/disk/by-path/...), C(/dev/disk/by-id/...)) to C(UUID=) (or C(PARTUUID=)
    when the device has no file system UUID).
  - Entries already by C(UUID=), C(LABEL=), C(PARTUUID=), C(/dev/mapper/...) or LVM names are left alone.
  - The original device name is kept in a comment above the rewritten line, and the first original of the file
    is saved under O(backup_dir).
  - Device ids come from C(blkid), or from O(devices) when given (a disk image prepared offline, or a guest whose
    file system will be recreated with known UUIDs).
author:
  - esxi2ami.migrate maintainers (@esxi2ami)
options:
  path:
    description: The fstab to rewrite.
    type: path
    default: /etc/fstab
  devices:
    description:
      - "Known ids per device name, used instead of C(blkid) for those devices, for example
        C({\"/dev/sda1\": {\"UUID\": \"0a52...\", \"PARTUUID\": \"1234-01\"}})."
    type: dict
    default: {}
  backup_dir:
    description: Directory that receives the first original of O(path), under its own path.
    type: path
    default: /var/backups/esxi2ami
  fail_on_unresolved:
    description:
      - Fail when a device-name entry cannot be resolved to a UUID. When false the entry is left as it is and
        listed in RV(unresolved).
    type: bool
    default: false
extends_documentation_fragment:
  - esxi2ami.migrate.attributes
  - esxi2ami.migrate.attributes.check_mode_full
  - esxi2ami.migrate.attributes.diff_mode_full
  - esxi2ami.migrate.attributes.idempotent
"""

EXAMPLES = r"""
- name: Mount by UUID so the guest boots with NVMe or Xen disk names
  esxi2ami.migrate.guest_fstab:
  become: true

- name: Rewrite the fstab of an image whose root file system gets a known UUID
  esxi2ami.migrate.guest_fstab:
    path: /mnt/guest/etc/fstab
    backup_dir: /mnt/guest/var/backups/esxi2ami
    devices:
      /dev/sda1:
        UUID: 6f1e5c3a-3c4e-4a8e-9d59-5f0d6f7a2b11
"""

RETURN = r"""
changes:
  description: Entries rewritten (or to be rewritten in check mode).
  returned: always
  type: list
  elements: dict
  contains:
    device:
      description: The device name the entry used.
      type: str
      sample: /dev/sda1
    spec:
      description: What the entry uses now.
      type: str
      sample: UUID=6f1e5c3a-3c4e-4a8e-9d59-5f0d6f7a2b11
    mount:
      description: The entry's mount point.
      type: str
      sample: /
  sample: [{"device": "/dev/sda1", "spec": "UUID=6f1e5c3a-3c4e-4a8e-9d59-5f0d6f7a2b11", "mount": "/"}]
unresolved:
  description: Device names that could not be resolved to a UUID and were left as they are.
  returned: always
  type: list
  elements: str
  sample: ["/dev/sdb1"]
backup:
  description: Path of the backup of the original fstab, when the module wrote the file.
  returned: always
  type: str
  sample: /var/backups/esxi2ami/etc/fstab
"""

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.esxi2ami.migrate.plugins.module_utils._guest_boot import parse_blkid_export, rewrite_fstab  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/fstab"),
            devices=dict(type="dict", default={}),
            backup_dir=dict(type="path", default="/var/backups/esxi2ami"),
            fail_on_unresolved=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    devices = module.params["devices"]
    if not os.path.isfile(path):
        module.fail_json(msg="fstab %s does not exist: set path to the guest's fstab" % path)
    blkid = module.get_bin_path("blkid")

    def resolve(device):
        if device in devices:
            ids = devices[device]
            if not isinstance(ids, dict):
                module.fail_json(msg="devices[%s] must be a dict like {UUID: ...}, got %r" % (device, ids))
            return dict((str(k).upper(), str(v)) for k, v in ids.items())
        if not blkid or not os.path.exists(device):
            return None
        rc, out, _err = module.run_command([blkid, "-o", "export", "--", device])
        return parse_blkid_export(out) if rc == 0 else None

    with open(path, "r", encoding="utf-8", errors="surrogateescape") as handle:
        before = handle.read()
    after, changes, unresolved = rewrite_fstab(before, resolve)
    result = dict(
        changed=after != before,
        changes=[dict(device=d, spec=s, mount=m) for d, s, m in changes],
        unresolved=unresolved,
        backup="",
    )
    if module._diff:
        result["diff"] = dict(before_header=path, after_header=path, before=before, after=after)
    if unresolved and module.params["fail_on_unresolved"]:
        module.fail_json(
            msg="fstab entries %s name devices without a resolvable UUID: give their ids in devices, or mount them "
            "by LABEL=/UUID= yourself" % ", ".join(unresolved),
            **result,
        )
    if result["changed"] and not module.check_mode:
        backup = os.path.join(module.params["backup_dir"], path.lstrip("/"))
        if not os.path.exists(backup):
            os.makedirs(os.path.dirname(backup), mode=0o700, exist_ok=True)
            shutil.copy2(path, backup)
        result["backup"] = backup
        fd, tmp = tempfile.mkstemp(prefix=".fstab-", dir=os.path.dirname(path))
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(after)
        shutil.copystat(path, tmp)
        module.atomic_move(tmp, path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
