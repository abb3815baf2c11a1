# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PRIVATE: boot-time files of a guest leaving VMware (no Ansible imports).

- fstab: device names (``/dev/sda1``, ``/dev/disk/by-path/...``) become ``UUID=`` (or ``PARTUUID=``),
  because disk names change on EC2 (NVMe: ``/dev/nvme0n1p1``; Xen: ``/dev/xvda1``).
- GRUB default: which menu entry boots the distribution's stock kernel, the way ``grub-mkconfig``
  numbers and titles entries on Debian and Ubuntu.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

# Device names that change when the disk controller changes; /dev/mapper and LVM names are stable.
UNSTABLE_DEVICE = re.compile(r"^/dev/((s|v|xv|h)d[a-z]+[0-9]*|nvme[0-9]+n[0-9]+(p[0-9]+)?|disk/by-(path|id)/.+)$")


class FstabError(Exception):
    """An fstab that cannot be rewritten safely."""


def parse_blkid_export(text):
    """``blkid -o export DEV`` output -> dict (UUID, PARTUUID, LABEL, TYPE...)."""
    values = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def stable_name(ids):
    """The fstab spec for a device's ids: UUID= first (filesystem UUID), then PARTUUID=."""
    if ids.get("UUID"):
        return "UUID=%s" % ids["UUID"]
    if ids.get("PARTUUID"):
        return "PARTUUID=%s" % ids["PARTUUID"]
    return None


def rewrite_fstab(text, resolve):
    """Rewrite device-name entries of an fstab. ``resolve(device)`` returns the device's ids (dict)
    or None. Returns (new text, changes, unresolved): changes are (device, new spec, mount point);
    unresolved lists the device names that could not be mapped (left as they are)."""
    out = []
    changes = []
    unresolved = []
    for line in text.splitlines(True):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            out.append(line)
            continue
        fields = stripped.split()
        device = fields[0]
        if not UNSTABLE_DEVICE.match(device):
            out.append(line)
            continue
        ids = resolve(device) or {}
        spec = stable_name(ids)
        if not spec:
            unresolved.append(device)
            out.append(line)
            continue
        mount = fields[1] if len(fields) > 1 else ""
        # keep the original spacing: replace the first field only
        start = line.index(device)
        out.append("# esxi2ami: was %s\n" % device)
        out.append(line[:start] + spec + line[start + len(device) :])
        changes.append((device, spec, mount))
    return "".join(out), changes, unresolved


# ----------------------------------------------------------------------------------------------- GRUB


def _version_key(version):
    """Approximate ``sort -V`` (GNU filevercmp), which grub-mkconfig's version_sort uses."""
    parts = re.findall(r"\d+|[^\d]+", version)
    key = []
    for part in parts:
        if part.isdigit():
            key.append((1, int(part), ""))
        else:
            # '~' sorts before everything, letters before other characters, like filevercmp
            key.append((0, 0, "".join(chr(0) if c == "~" else c for c in part)))
    return key


def installed_kernels(root="/"):
    """Kernel versions with a ``/boot/vmlinuz-<version>`` image under ``root``."""
    boot = os.path.join(root, "boot")
    if not os.path.isdir(boot):
        return []
    return sorted(
        (n[len("vmlinuz-") :] for n in os.listdir(boot) if n.startswith("vmlinuz-") and not n.endswith(".old")),
        key=_version_key,
        reverse=True,
    )


def grub_os_name(distributor):
    """The ``OS`` grub-mkconfig's 10_linux puts in titles (Ubuntu keeps the bare name)."""
    distributor = (distributor or "Debian").strip()
    if distributor in ("Ubuntu", "Kubuntu"):
        return distributor
    return "%s GNU/Linux" % distributor


def grub_settings(root="/"):
    """Plain ``KEY=value`` settings of ``/etc/default/grub`` and ``/etc/default/grub.d/*.cfg`` in the
    order grub-mkconfig sources them (later wins). Values computed by the shell (backticks, ``$(``)
    are left out: only grub-mkconfig can know them."""
    paths = [os.path.join(root, "etc/default/grub")]
    dropins = os.path.join(root, "etc/default/grub.d")
    if os.path.isdir(dropins):
        paths += [os.path.join(dropins, n) for n in sorted(os.listdir(dropins)) if n.endswith(".cfg")]
    settings = {}
    for path in paths:
        if not os.path.isfile(path):
            continue
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                found = re.match(r"^\s*(?:export\s+)?(GRUB_[A-Z_]+)=(.*)$", line.rstrip("\n"))
                if not found:
                    continue
                value = found.group(2).strip()
                if "`" in value or "$(" in value or "${" in value:
                    settings.pop(found.group(1), None)
                    continue
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    value = value[1:-1]
                settings[found.group(1)] = value
    return settings


def grub_default_entry(kernels, stock_version, distributor, submenu=True):
    """GRUB_DEFAULT that boots ``stock_version``: ``0`` when grub-mkconfig lists it first (it is
    the newest by version sort), else the submenu path ``Advanced options for OS>OS, with Linux V``
    (or the entry's title alone when GRUB_DISABLE_SUBMENU puts every kernel at the top level)."""
    if stock_version not in kernels:
        raise ValueError(
            "kernel %s has no /boot/vmlinuz-%s (installed: %s)" % (stock_version, stock_version, ", ".join(kernels))
        )
    ordered = sorted(kernels, key=_version_key, reverse=True)
    if ordered[0] == stock_version:
        return "0"
    os_name = grub_os_name(distributor)
    title = "%s, with Linux %s" % (os_name, stock_version)
    if not submenu:
        return title
    return "Advanced options for %s>%s" % (os_name, title)


def grub_default_dropin(entry):
    """Content of ``/etc/default/grub.d/90-esxi2ami-default.cfg``."""
    quoted = entry.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    return (
        "# Managed by esxi2ami.migrate guest_prepare: boot the distribution's stock kernel (EC2 VM Import needs it).\n"
        'GRUB_DEFAULT="%s"\n' % quoted
    )
