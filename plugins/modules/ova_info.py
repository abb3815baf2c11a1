#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ova_info
short_description: Read an OVA (local or in S3) and check it the way EC2 VM Import will
version_added: 1.0.0
description:
  - Reads an OVA from a local path or from S3 and reports its tar members, the VM name, guest OS, firmware and disks
    from the OVF descriptor, and whether each disk is a stream-optimized VMDK.
  - S3 objects are read with ranged GETs only (tar headers, the descriptor, the manifest and the first bytes of each
    disk), never as a whole, so a 500 GiB OVA is checked in seconds.
  - Local files also get their SHA-256 (or SHA-1) manifest verified against the content.
  - Returns the facts M(esxi2ami.migrate.ec2_import_image) needs (RV(boot_mode), RV(architecture), RV(platform)).
  - With O(validate=true) it fails, listing the reasons, when VM Import would reject the OVA.
author:
  - esxi2ami.migrate maintainers (@esxi2ami)
options:
  src:
    description:
      - The OVA, a local path or an S3 URL C(s3://bucket/key.ova).
    type: str
    required: true
  validate:
    description:
      - Fail when VM Import would reject the OVA, naming every reason found.
      - Checked are the descriptor being the first member, disks referenced but missing, disks that are not
        stream-optimized VMDKs, more than 21 disks, disks of 16 TiB or more, PAX tar headers, guest OS families VM
        Import does not support, a size in the descriptor that differs from the archive, files the descriptor
        references but the archive lacks (an ISO left attached), an EFI guest without the fallback loader, and (local
        files) manifest mismatches.
      - Without it the problems are returned in RV(problems) and the module does not fail.
    type: bool
    default: false
notes:
  - For an EFI guest the EFI system partition of the first disk (GPT or MBR, FAT12/16/32) is looked at for the
    fallback loader C(EFI/BOOT/BOOTX64.EFI) (C(BOOTAA64.EFI) on arm64), reading only the grains needed. Other file
    systems on the disks are not read.
  - Needs C(boto3) for S3 sources; the permission needed is C(s3:GetObject) on the key.
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - esxi2ami.migrate.attributes
  - esxi2ami.migrate.attributes.info_module
seealso:
  - module: esxi2ami.migrate.vsphere_ova_export
  - module: esxi2ami.migrate.ec2_import_image
"""

EXAMPLES = r"""
- name: Check an exported OVA before importing it
  esxi2ami.migrate.ova_info:
    src: s3://migration-bucket/ova/web01.ova
    validate: true
  register: ova

- name: Import it with the facts the OVA gives
  esxi2ami.migrate.ec2_import_image:
    name: web01
    s3_bucket: migration-bucket
    s3_key: ova/web01.ova
    boot_mode: "{{ ova.boot_mode }}"
    architecture: "{{ ova.architecture }}"
    platform: "{{ ova.platform }}"

- name: Look at a local OVA without failing on problems
  esxi2ami.migrate.ova_info:
    src: /srv/ova/db01.ova
  register: local_ova
"""

RETURN = r"""
src:
  description: The OVA, as given.
  returned: always
  type: str
  sample: s3://migration-bucket/ova/web01.ova
size:
  description: Size of the OVA in bytes.
  returned: always
  type: int
  sample: 1288490496
members:
  description: The tar members in archive order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Member name.
      type: str
      sample: web01.ovf
    offset:
      description: Offset of the member's data in the archive.
      type: int
      sample: 512
    size:
      description: Size in bytes.
      type: int
      sample: 6144
    header:
      description: Tar header format, V(gnu), V(ustar), V(pax) or V(v7).
      type: str
      sample: gnu
vm_name:
  description: The VM's name in the OVF descriptor.
  returned: when the descriptor could be read
  type: str
  sample: web01
guest_os:
  description: The guest OS id (VMware osType) in the descriptor.
  returned: when the descriptor could be read
  type: str
  sample: debian11_64Guest
firmware:
  description: V(bios) or V(efi), from the descriptor's C(firmware) setting.
  returned: when the descriptor could be read
  type: str
  sample: bios
boot_mode:
  description: The ImportImage C(BootMode) matching the firmware, V(legacy-bios) or V(uefi).
  returned: when the descriptor could be read
  type: str
  sample: legacy-bios
architecture:
  description: The ImportImage C(Architecture) matching the guest OS, V(x86_64), V(i386) or V(arm64).
  returned: when the descriptor could be read
  type: str
  sample: x86_64
platform:
  description: The ImportImage C(Platform), V(Linux) or V(Windows).
  returned: when the descriptor could be read
  type: str
  sample: Linux
disks:
  description: The disks the descriptor references, in order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: File name (member) of the disk.
      type: str
      sample: web01-disk1.vmdk
    capacity:
      description: Virtual size in bytes, from the descriptor.
      type: int
      sample: 17179869184
    size:
      description: Size of the member in bytes; null when the member is missing.
      type: int
      sample: 1288486912
    format:
      description: V(vmdk), or V(unknown) when the member is not a VMDK.
      type: str
      sample: vmdk
    stream_optimized:
      description: Whether the member is a stream-optimized VMDK (what VM Import takes from an OVA).
      type: bool
      sample: true
manifest:
  description: The manifest and what its verification found.
  returned: when the OVA has a manifest
  type: dict
  contains:
    name:
      description: Manifest member name.
      type: str
      sample: web01.mf
    verified:
      description: Whether the digests were checked (local files only).
      type: bool
      sample: true
    mismatches:
      description: Members whose digest does not match, or that are listed but missing.
      type: list
      elements: str
      sample: []
    unlisted:
      description: Members that the manifest does not list.
      type: list
      elements: str
      sample: []
efi_fallback_loader:
  description:
    - For an EFI guest, whether the first disk's EFI system partition has the fallback loader; null when that could
      not be determined (no EFI system partition found, or a file system the module cannot read).
  returned: when the firmware is EFI
  type: bool
  sample: true
problems:
  description: The reasons VM Import would reject the OVA; empty when none were found.
  returned: always
  type: list
  elements: str
  sample: ["disk 'web01-disk1.vmdk': VMDK is not stream-optimized (version 1, flags 0x3, compression 0)"]
"""

from ansible.module_utils.common.text.converters import to_native  # noqa: E402

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule  # noqa: E402
from ansible_collections.esxi2ami.migrate.plugins.module_utils import ova  # noqa: E402
from ansible_collections.esxi2ami.migrate.plugins.module_utils.vmimport import VMImportError, parse_s3_url  # noqa: E402

try:
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:
    pass  # AnsibleAWSModule reports missing botocore


def s3_reader(client, bucket, key):
    """A ``read(offset, length)`` callable doing ranged GETs, and the object's size (HeadObject)."""
    head = client.head_object(Bucket=bucket, Key=key)
    size = head["ContentLength"]
    etag = head.get("ETag")

    def read(offset, length):
        if length <= 0 or offset >= size:
            return b""
        end = min(size, offset + length) - 1
        resp = client.get_object(Bucket=bucket, Key=key, Range="bytes=%d-%d" % (offset, end), IfMatch=etag)
        return resp["Body"].read()

    return read, size


def main():
    module = AnsibleAWSModule(
        argument_spec=dict(src=dict(type="str", required=True), validate=dict(type="bool", default=False)),
        supports_check_mode=True,
    )
    src = module.params["src"]
    try:
        if src.startswith("s3://"):
            bucket, dummy, key = src[5:].partition("/")
            if not bucket or not key:
                module.fail_json(msg="src %r must look like s3://bucket/key.ova" % src)
            try:
                bucket, key = parse_s3_url(src, what="src")
            except VMImportError as exc:
                module.fail_json(msg=to_native(exc))
            read, size = s3_reader(module.client("s3"), bucket, key)
            facts = ova.inspect_ova(read, size, verify_manifest=False)
        else:
            read, size = ova.file_reader(src)
            facts = ova.inspect_ova(read, size, verify_manifest=True)
    except (ClientError, BotoCoreError) as exc:
        module.fail_json_aws(exc, msg="reading %s failed" % src)
    except OSError as exc:
        module.fail_json(msg="cannot read %s: %s" % (src, to_native(exc)))
    except ova.OvaError as exc:
        if module.params["validate"]:
            module.fail_json(
                msg="%s is not an OVA VM Import can use: %s. Export the VM again "
                "(esxi2ami.migrate.vsphere_ova_export), or copy or upload the whole file again if it was cut short"
                % (src, to_native(exc)),
                problems=[str(exc)],
            )
        module.exit_json(changed=False, src=src, size=0, members=[], disks=[], problems=[to_native(exc)])
    facts = {k: v for k, v in facts.items() if v is not None}
    facts.update(changed=False, src=src, size=size)
    if module.params["validate"] and facts["problems"]:
        fix = ""
        if any("stream-optimized" in problem for problem in facts["problems"]):
            fix = (
                ". Export the VM again with esxi2ami.migrate.vsphere_ova_export (it writes stream-optimized disks), or "
                "convert each disk with qemu-img convert -O vmdk -o subformat=streamOptimized and rebuild the OVA"
            )
        module.fail_json(
            msg="VM Import would reject %s: %s%s" % (src, "; ".join(facts["problems"]), fix),
            **{k: v for k, v in facts.items() if k != "changed"},
        )
    module.exit_json(**facts)


if __name__ == "__main__":
    main()
