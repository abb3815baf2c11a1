#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vsphere_ova_export
short_description: Export a vSphere VM as an OVA straight into S3 or to a local file, in one pass
version_added: 1.0.0
description:
  - Finds a VM by name, BIOS uuid or managed object id, powers it off (guest shutdown through VMware Tools, then
    hard after a timeout), disconnects its CD-ROM and floppy media, and exports it through an C(ExportVm) lease.
  - Every disk is streamed as a stream-optimized VMDK into an OVA (OVF descriptor first, SHA-256 manifest next, then
    the disks, GNU tar headers). For an C(s3://) destination the OVA goes up as a multipart upload while it is
    downloaded, with no local copy; the part holding the descriptor is uploaded last.
  - The lease is kept alive with real progress while the transfer runs, also while S3 is slow.
  - On any failure the multipart upload is aborted (or the partial file removed), the lease is given back, and the
    power state is restored when O(restore_power_state=true).
  - The VM's uuid and configuration change version are recorded with the OVA (S3 object metadata, or extended
    attributes of a local file), so O(overwrite=different) skips an export whose destination already matches.
author:
  - esxi2ami.migrate maintainers (@esxi2ami)
options:
  name:
    description:
      - Name of the VM. It must match exactly one VM (within O(datacenter) and O(folder) when given).
      - Exactly one of O(name), O(uuid) and O(moid) is required.
    type: str
  uuid:
    description:
      - BIOS uuid (C(config.uuid)) or instance uuid of the VM.
    type: str
  moid:
    description:
      - Managed object id of the VM, for example C(vm-42).
    type: str
  datacenter:
    description:
      - Look for the VM in this datacenter only.
    type: str
  folder:
    description:
      - Look for the VM in this folder only, for example C(/DC0/vm/prod) or C(prod).
    type: str
  power_off:
    description:
      - How to power the VM off before the export. An export needs a powered-off VM.
      - V(graceful) shuts the guest down through VMware Tools and waits up to O(shutdown_timeout) seconds, then
        powers off hard. Without running VMware Tools it powers off hard at once.
      - V(hard) powers off at once. V(never) fails when the VM is not powered off.
    type: str
    choices: [graceful, hard, never]
    default: graceful
  shutdown_timeout:
    description:
      - Seconds to wait for a guest shutdown before powering off hard.
    type: int
    default: 300
  restore_power_state:
    description:
      - Power the VM on again after the export (or after a failed export) when it was on before.
    type: bool
    default: false
  eject_media:
    description:
      - Disconnect CD-ROM and floppy drives (not connected, not connected at power on, no image file) so that the
        OVA references no ISO or floppy image. The result lists what was changed.
      - With V(false), an attached ISO stays on the VM; it is never part of the OVA.
    type: bool
    default: true
  dest:
    description:
      - Where to write the OVA, either a local path like C(/srv/ova/web01.ova) (its directory must exist) or an S3
        URL C(s3://bucket/key.ova).
      - S3 destinations use the AWS connection options (credentials, O(region), O(endpoint_url), ...).
    type: str
    required: true
  overwrite:
    description:
      - V(different) skips the export when O(dest) exists and was exported from the same VM at the same
        configuration change version (changed=false); otherwise it exports again.
      - V(always) exports even when O(dest) exists. V(never) fails when O(dest) exists.
    type: str
    choices: [different, always, never]
    default: different
  part_size:
    description:
      - S3 multipart part size in MiB.
      - By default at least 16 MiB and large enough that the VM's total disk capacity fits in 9,000 parts (S3 allows
        10,000). A smaller value is raised to that minimum, with a warning.
      - Memory use is about (O(max_concurrency) + 3) x O(part_size).
    type: int
  max_concurrency:
    description:
      - Number of S3 parts uploaded at the same time.
    type: int
    default: 4
  progress_file:
    description:
      - Path of a JSON file updated about every second with the progress (C(bytes), C(total_bytes), C(percent), C(rate)
        in bytes per second, C(eta) in seconds, C(phase)), for watching a long export run with C(async).
    type: path
  encrypt:
    description:
      - Ask S3 for server-side encryption of the OVA.
    type: bool
    default: true
  encryption_mode:
    description:
      - Server-side encryption with S3-managed keys (V(AES256)) or with AWS KMS (V(aws:kms)).
    type: str
    choices: [AES256, aws:kms]
    default: AES256
  encryption_kms_key_id:
    description:
      - KMS key id, alias or ARN for O(encryption_mode=aws:kms). Without it S3 uses the AWS managed key.
      - The C(vmimport) role needs C(kms:Decrypt) on this key to import the OVA.
    type: str
  expected_bucket_owner:
    description:
      - AWS account id that must own the bucket; S3 refuses every request when it is owned by another account.
    type: str
  validate_certs:
    description:
      - Whether to verify the vSphere server's TLS certificate, for the API connection and for every disk download.
      - Set to V(false) only for lab servers with self-signed certificates.
      - If not set, the value of the E(VMWARE_VALIDATE_CERTS) environment variable is used, else V(true).
      - In this module it applies to vSphere only; use O(aws_validate_certs) for the S3 endpoint.
    type: bool
    default: true
  aws_validate_certs:
    description:
      - Whether to verify the TLS certificate of the S3 endpoint. Use O(aws_ca_bundle) for a private CA rather
        than turning this off.
    type: bool
    default: true
notes:
  - The controller needs no disk space for an S3 export; for a local file, the size of the OVA.
  - A local file is written as C(<dest>.partial) and renamed when complete.
  - The S3 permissions needed are C(s3:PutObject), C(s3:AbortMultipartUpload) and C(s3:GetObject) (HeadObject, for
    O(overwrite)) on the key, and C(s3:ListBucket) (HeadBucket, to check the bucket before the VM is touched) and
    C(s3:ListBucketMultipartUploads) (to find stale uploads) on the bucket; with KMS, C(kms:GenerateDataKey) on the
    key. Without C(s3:ListBucketMultipartUploads) the module warns and goes on without looking for stale uploads.
  - Needs C(pyvmomi) and C(boto3) on the host that runs the module.
  - SIGTERM (a cancelled AWX job) aborts the upload and the lease like any failure. A process killed with SIGKILL
    cannot clean up; its multipart upload stays (the next run for the same O(dest) aborts it, see
    RV(aborted_stale_uploads); a local C(<dest>.partial) file is removed likewise, see RV(removed_partial_file)) and
    vSphere releases its export lease when the lease times out. An
    C(AbortIncompleteMultipartUpload) lifecycle rule on the bucket also removes such uploads.
  - Before exporting to S3, every multipart upload in progress for the destination key is aborted as stale (in
    check mode only reported), so do not run two exports to the same O(dest) at the same time.
  - When the vCenter session ends during the export (logged out, terminated by an administrator, expired), the
    export fails saying so; the multipart upload is aborted, and vSphere releases the lease after its timeout.
extends_documentation_fragment:
  - esxi2ami.migrate.vmware
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - esxi2ami.migrate.attributes
  - esxi2ami.migrate.attributes.check_mode_full
  - esxi2ami.migrate.attributes.diff_mode_full
  - esxi2ami.migrate.attributes.idempotent
seealso:
  - module: esxi2ami.migrate.ova_info
  - module: esxi2ami.migrate.ec2_import_image
"""

EXAMPLES = r"""
- name: Export web01 straight into S3
  esxi2ami.migrate.vsphere_ova_export:
    hostname: vcenter.example.com
    username: export@vsphere.local
    password: "{{ vcenter_password }}"
    name: web01
    datacenter: DC1
    dest: s3://migration-bucket/ova/web01.ova
    region: eu-west-1
    progress_file: /tmp/web01-export.json
  register: export

- name: Export to a local file, shutting the guest down first and powering it on again afterwards
  esxi2ami.migrate.vsphere_ova_export:
    uuid: 4207b4b1-8c2d-7a2e-0a5e-1f1c2d3e4f50
    power_off: graceful
    shutdown_timeout: 120
    restore_power_state: true
    dest: /srv/ova/db01.ova

- name: With the credentials set once for both groups
  module_defaults:
    group/esxi2ami.migrate.vmware:
      hostname: "{{ vcenter_host }}"
      username: "{{ vcenter_user }}"
      password: "{{ vcenter_password }}"
    group/esxi2ami.migrate.aws:
      region: us-east-1
  block:
    - name: Export with SSE-KMS, checking who owns the bucket
      esxi2ami.migrate.vsphere_ova_export:
        name: app01
        dest: s3://migration-bucket/app01.ova
        encryption_mode: aws:kms
        encryption_kms_key_id: alias/migration
        expected_bucket_owner: "123456789012"
"""

RETURN = r"""
dest:
  description: The destination, as given.
  returned: always
  type: str
  sample: s3://migration-bucket/ova/web01.ova
size:
  description: Size of the OVA in bytes (in check mode, the sum of the disks' capacities, an upper estimate).
  returned: always
  type: int
  sample: 1288490496
disks:
  description: The disks in the OVA, in order. Empty when the export was skipped or in check mode.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Member name in the OVA.
      type: str
      sample: web01-disk1.vmdk
    capacity:
      description: Virtual size of the disk in bytes.
      type: int
      sample: 17179869184
    size:
      description: Size of the stream-optimized VMDK in bytes.
      type: int
      sample: 1288486912
    sha256:
      description: SHA-256 of the VMDK, as in the manifest.
      type: str
      sample: 0f343b0931126a20f133d67c2b018a3b6b1c1ea1e0b3c7a2d9d2f1c0b9a8e7d6
s3:
  description: The S3 object, for an C(s3://) destination.
  returned: when dest is an S3 URL
  type: dict
  contains:
    bucket:
      description: Bucket name.
      type: str
      sample: migration-bucket
    key:
      description: Object key.
      type: str
      sample: ova/web01.ova
    etag:
      description: ETag of the object (of the multipart upload).
      type: str
      sample: '"d41d8cd98f00b204e9800998ecf8427e-3"'
    version_id:
      description: Version id when the bucket is versioned.
      type: str
      sample: null
    parts:
      description: Number of multipart parts.
      type: int
      sample: 3
    part_size:
      description: Part size in bytes.
      type: int
      sample: 16777216
vm:
  description: The VM that was exported.
  returned: always
  type: dict
  contains:
    name:
      description: VM name.
      type: str
      sample: web01
    moid:
      description: Managed object id.
      type: str
      sample: vm-42
    uuid:
      description: BIOS uuid.
      type: str
      sample: 4207b4b1-8c2d-7a2e-0a5e-1f1c2d3e4f50
    change_version:
      description: Configuration change version recorded with the OVA.
      type: str
      sample: "2026-11-28T02:35:12.123456Z"
    firmware:
      description:
        - The VM's firmware, C(bios) or C(efi) (also in check mode), for example to choose or check the import's
          boot mode before exporting.
      type: str
      sample: efi
    guest_id:
      description: The guest OS id vSphere has for the VM.
      type: str
      sample: debian12_64Guest
power:
  description: The power changes made.
  returned: always
  type: dict
  contains:
    before:
      description: Power state found.
      type: str
      sample: poweredOn
    action:
      description:
        - V(none), V(shutdown) (guest shutdown), V(shutdown_then_poweroff) (guest shutdown timed out or VMware Tools
          not running, then powered off) or V(poweroff).
        - In check mode, the action that would be tried (V(shutdown) for O(power_off=graceful)).
      type: str
      sample: shutdown
    note:
      description: Why a graceful shutdown became a hard power off.
      type: str
      sample: the guest did not shut down within 300s; powered off hard
    restored:
      description: Whether the VM was powered on again afterwards.
      type: bool
      sample: false
    after:
      description: Power state the VM was left in.
      type: str
      sample: poweredOff
media:
  description: The CD-ROM and floppy drives whose media were disconnected (or would be, in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{"label": "CD/DVD drive 1", "type": "cdrom", "backing": "[ds1] iso/tools.iso", "connected": true,
            "start_connected": true, "key": 3000}]
aborted_stale_uploads:
  description:
    - Multipart uploads for the destination key that were in progress before this run (left by a killed run) and
      were aborted, oldest first. In check mode, the uploads that would be aborted.
  returned: when dest is an S3 URL
  type: list
  elements: dict
  contains:
    upload_id:
      description: Upload id.
      type: str
      sample: 2~iCw_lDY8VoNlkUHHxJU9Tf0WoBb1vZ
    initiated:
      description: When the upload was started (ISO 8601).
      type: str
      sample: "2026-11-28T02:35:12+00:00"
  sample: []
removed_partial_file:
  description:
    - The C(<dest>.partial) file a killed run left, which was removed before exporting (in check mode, would be
      removed); null when there was none.
  returned: when dest is a local path
  type: str
  sample: /srv/ova/web01.ova.partial
duration:
  description: Seconds the export took (lease to completed upload).
  returned: always
  type: float
  sample: 95.3
throughput:
  description: Average bytes per second written to the destination.
  returned: always
  type: float
  sample: 13525872.4
msg:
  description: What happened.
  returned: always
  type: str
  sample: exported 2 disks (1288490496 bytes) to s3://migration-bucket/ova/web01.ova in 95.3s
"""

import errno  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.common.text.converters import to_native  # noqa: E402

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule  # noqa: E402
from ansible_collections.esxi2ami.migrate.plugins.module_utils import ova, s3_stream, vsphere  # noqa: E402
from ansible_collections.esxi2ami.migrate.plugins.module_utils.vmimport import VMImportError, parse_s3_url  # noqa: E402
from ansible_collections.esxi2ami.migrate.plugins.module_utils.vmware_argument_spec import (  # noqa: E402
    connection_params,
    vmware_argument_spec,
)

try:
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:
    pass  # AnsibleAWSModule reports missing botocore

META_UUID = "esxi2ami-vm-uuid"
META_VERSION = "esxi2ami-vm-change-version"
XATTR_UUID = "user.esxi2ami.vm_uuid"
XATTR_VERSION = "user.esxi2ami.vm_change_version"
MIB = 1 << 20


def parse_dest(dest):
    """(bucket, key) for an S3 URL, or (None, path)."""
    if dest.startswith("s3://"):
        bucket, dummy, key = dest[5:].partition("/")
        if not bucket or not key or key.endswith("/"):
            raise ValueError("dest %r must look like s3://bucket/key.ova (a bucket and an object key)" % dest)
        try:
            return parse_s3_url(dest, what="dest")  # S3's bucket name rules and key limits
        except VMImportError as exc:
            raise ValueError(str(exc)) from None
    if "://" in dest:
        raise ValueError("dest %r: only local paths and s3://bucket/key URLs are supported" % dest)
    return None, dest


def config_version(facts):
    """The VM's configuration version: changeVersion, or the config modification time where that is empty."""
    return facts["change_version"] or "modified-%d" % facts["mtime"]


class ProgressFile:
    """Atomically rewritten JSON progress, at most once a second (plus the final state)."""

    def __init__(self, path, dest):
        self.path = path
        self.dest = dest
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, done, total, phase="exporting", force=False, **extra):
        if not self.path:
            return
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        if phase == "exporting" and done == 0:
            self.start = now  # rate and ETA of the transfer, not of the power off before it
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        state = {
            "phase": phase,
            "dest": self.dest,
            "bytes": done,
            "total_bytes": total,
            "percent": round(min(100.0, 100.0 * done / total), 1) if total else None,
            "rate": round(rate, 1),
            "eta": round((total - done) / rate, 1) if rate > 0 and total and total > done else None,
            "elapsed": round(elapsed, 1),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        state.update(extra)
        tmp = "%s.tmp" % self.path
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.path)


class Destination:
    """Where the OVA goes: existence and recorded VM version, and the sink that writes it."""

    def __init__(self, module, dest):
        self.module = module
        self.dest = dest
        self.bucket, self.key = parse_dest(dest)
        self.path = None if self.bucket else os.path.abspath(self.key)
        self._s3 = None

    @property
    def is_s3(self):
        return self.bucket is not None

    @property
    def s3(self):
        if self._s3 is None:
            p = self.module.params
            verify = p["aws_validate_certs"]
            if verify and p.get("aws_ca_bundle"):
                verify = p["aws_ca_bundle"]
            self._s3 = self.module.client("s3", verify=verify)
        return self._s3

    def _owner(self):
        owner = self.module.params.get("expected_bucket_owner")
        return {"ExpectedBucketOwner": owner} if owner else {}

    def current(self):
        """None when absent, else {uuid, version, size, etag}."""
        if self.is_s3:
            try:
                head = self.s3.head_object(Bucket=self.bucket, Key=self.key, **self._owner())
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            meta = head.get("Metadata") or {}
            return {
                "uuid": meta.get(META_UUID),
                "version": meta.get(META_VERSION),
                "size": head.get("ContentLength"),
                "etag": head.get("ETag"),
                "version_id": head.get("VersionId"),
            }
        if not os.path.exists(self.path):
            return None
        found = {"size": os.path.getsize(self.path), "uuid": None, "version": None}
        for attr, field in ((XATTR_UUID, "uuid"), (XATTR_VERSION, "version")):
            try:
                found[field] = os.getxattr(self.path, attr).decode("utf-8")
            except OSError:
                pass
        return found

    def stale_uploads(self):
        """Multipart uploads in progress for our key before we start any (a killed run's); [] for files."""
        if not self.is_s3:
            return []
        try:
            return s3_stream.in_progress_uploads(
                self.s3, self.bucket, self.key, self.module.params.get("expected_bucket_owner")
            )
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("403", "AccessDenied"):
                self.module.warn(
                    "cannot list the multipart uploads in progress for %s (AccessDenied): uploads left by a killed "
                    "run are not cleaned up; grant s3:ListBucketMultipartUploads on bucket %s"
                    % (self.dest, self.bucket)
                )
                return []
            raise

    def stale_partial(self):
        """The ``<dest>.partial`` file a killed run left, or None (always None for S3)."""
        if self.is_s3:
            return None
        partial = "%s.partial" % self.path
        return partial if os.path.isfile(partial) else None

    def abort_uploads(self, uploads):
        for upload in uploads:
            s3_stream.abort_upload(
                self.s3, self.bucket, self.key, upload["upload_id"], self.module.params.get("expected_bucket_owner")
            )

    def check_writable(self):
        """Fail before the VM is touched when the destination cannot take the OVA."""
        if self.is_s3:
            try:
                self.s3.head_bucket(Bucket=self.bucket, **self._owner())
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code"))
                if code in ("404", "NoSuchBucket", "NotFound"):
                    raise ValueError("bucket %r does not exist: create it first" % self.bucket) from None
                if code in ("403", "AccessDenied", "Forbidden"):
                    raise ValueError(
                        "access to bucket %r is denied%s: check the credentials' S3 permissions"
                        % (
                            self.bucket,
                            " or it is not owned by account %s" % self.module.params["expected_bucket_owner"]
                            if self.module.params.get("expected_bucket_owner")
                            else "",
                        )
                    ) from None
                raise
            return
        parent = os.path.dirname(self.path) or "."
        if not os.path.isdir(parent):
            raise ValueError("the directory of dest %r does not exist: create %s first" % (self.dest, parent))
        if os.path.isdir(self.path):
            raise ValueError("dest %r is a directory: give the path of the .ova file" % self.dest)
        if not os.access(parent, os.W_OK):
            raise ValueError("cannot write to %s (dest %r): check its permissions" % (parent, self.dest))

    def make_sink(self, facts, state):
        p = self.module.params

        def factory(head_size, estimate):
            if not self.is_s3:
                return ova.FileSink(self.path, head_size)
            part_size, note = s3_stream.choose_part_size(estimate, (p["part_size"] or 0) * MIB)
            if note:
                self.module.warn(note)
            extra = {
                "ContentType": "application/x-tar",
                "Metadata": {META_UUID: facts["uuid"], META_VERSION: config_version(facts)},
            }
            if p["encrypt"]:
                extra["ServerSideEncryption"] = p["encryption_mode"]
                if p["encryption_mode"] == "aws:kms" and p.get("encryption_kms_key_id"):
                    extra["SSEKMSKeyId"] = p["encryption_kms_key_id"]
            sink = s3_stream.MultipartSink(
                self.s3,
                self.bucket,
                self.key,
                part_size,
                max_concurrency=p["max_concurrency"],
                extra_args=extra,
                expected_bucket_owner=p.get("expected_bucket_owner"),
            )
            state["sink"] = sink
            return sink.start()

        return factory

    def record(self, facts):
        """Local files: the VM's uuid and version as extended attributes (S3 got them as metadata)."""
        if self.is_s3:
            return True
        try:
            os.setxattr(self.path, XATTR_UUID, facts["uuid"].encode("utf-8"))
            os.setxattr(self.path, XATTR_VERSION, config_version(facts).encode("utf-8"))
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                return False
            raise
        return True


def vm_selector(params):
    for key in ("name", "uuid", "moid"):
        if params[key]:
            return "%s %r" % (key, params[key])
    return "?"


def left_note(left):
    if not left:
        return ""
    lease = "; the export lease was %s" % left["lease"] if left.get("lease") else ""
    return ". Nothing was left behind at the destination%s; the VM was left %s" % (lease, left["power_state"])


def run(module, client, left):
    """Export (or predict it in check mode); ``left`` tracks the VM's power state for failure messages."""
    p = module.params
    dest = Destination(module, p["dest"])
    dest.check_writable()
    stale = dest.stale_uploads()  # cleaned up below, once the input is known to be good
    partial = dest.stale_partial()
    vm = client.find_vm(name=p["name"], uuid=p["uuid"], moid=p["moid"], datacenter=p["datacenter"], folder=p["folder"])
    facts = vsphere.vm_facts(vm)
    vm_out = {
        "name": facts["name"],
        "moid": facts["moid"],
        "uuid": facts["uuid"],
        "change_version": config_version(facts),
        "firmware": facts["firmware"] or "bios",
        "guest_id": facts["guest_id"],
    }
    disks = client.disks(vm)
    capacity = sum(d["capacity"] for d in disks)
    current = dest.current()
    result = {
        "changed": False,
        "dest": p["dest"],
        "size": 0,
        "disks": [],
        "vm": vm_out,
        "power": {"before": facts["power_state"], "action": "none", "after": facts["power_state"], "restored": False},
        "media": [],
        "duration": 0.0,
        "throughput": 0.0,
    }
    stale_note = ""
    if dest.is_s3:
        result["aborted_stale_uploads"] = stale
        result["changed"] = bool(stale)
        if stale:
            stale_note = "; %s %d stale multipart upload(s) of an earlier run" % (
                "would abort" if module.check_mode else "aborted",
                len(stale),
            )
    else:
        result["removed_partial_file"] = partial
        result["changed"] = bool(partial)
        if partial:
            stale_note = "; %s %s, left by an earlier run" % (
                "would remove" if module.check_mode else "removed",
                partial,
            )
    media = []
    for m in client.removable_media(vm):
        m.pop("_device", None)
        if m.pop("needs_eject"):
            media.append(m)
    diff_before = {
        "power_state": facts["power_state"],
        "media": [m["label"] + ": " + (m["backing"] or "-") for m in media] if p["eject_media"] else [],
        "dest": {
            "exists": current is not None,
            "vm_uuid": (current or {}).get("uuid"),
            "vm_change_version": (current or {}).get("version"),
        },
    }

    if current is not None and p["overwrite"] == "never":
        raise ValueError(
            "dest %s already exists and overwrite is never: remove it, or set overwrite to different or always"
            % p["dest"]
        )
    if not module.check_mode:
        # What a killed run left (a process killed with SIGKILL cannot clean up); this run has started nothing yet.
        dest.abort_uploads(stale)
        if partial:
            os.unlink(partial)
    if current is not None:
        if (
            p["overwrite"] == "different"
            and current.get("uuid") == facts["uuid"]
            and current.get("version") == config_version(facts)
        ):
            result["size"] = current.get("size") or 0
            if dest.is_s3:
                result["s3"] = {
                    "bucket": dest.bucket,
                    "key": dest.key,
                    "etag": current.get("etag"),
                    "version_id": current.get("version_id"),
                }
            ProgressFile(p["progress_file"], p["dest"]).update(
                result["size"], result["size"], phase="unchanged", force=True
            )
            result["msg"] = "%s already holds VM %s (uuid %s) at configuration version %s; nothing to do%s" % (
                p["dest"],
                facts["name"],
                facts["uuid"],
                config_version(facts),
                stale_note,
            )
            return result

    if facts["power_state"] != "poweredOff" and p["power_off"] == "never":
        raise vsphere.VSphereError(
            "VM %r is %s and power_off is never: shut it down first, or set power_off to graceful or hard"
            % (facts["name"], facts["power_state"])
        )
    predicted_action = "none"
    if facts["power_state"] != "poweredOff":
        predicted_action = "poweroff" if p["power_off"] == "hard" else "shutdown"
    diff_after = {
        "power_state": facts["power_state"] if p["restore_power_state"] else "poweredOff",
        "media": [],
        "dest": {"exists": True, "vm_uuid": facts["uuid"], "vm_change_version": "(after the export)"},
    }
    if not p["eject_media"]:
        diff_after["media"] = diff_before["media"]
    result["diff"] = {"before": diff_before, "after": diff_after}
    if module.check_mode:
        result.update(
            changed=True,
            size=capacity,
            media=media if p["eject_media"] else [],
            msg="would export VM %s (%d disks, up to %d bytes) to %s%s%s%s"
            % (
                facts["name"],
                len(disks),
                capacity,
                p["dest"],
                "; power off: %s" % predicted_action if predicted_action != "none" else "",
                "; eject %d media" % len(media) if media and p["eject_media"] else "",
                stale_note,
            ),
        )
        result["power"]["action"] = predicted_action
        return result

    progress = ProgressFile(p["progress_file"], p["dest"])
    progress.update(0, capacity, phase="powering off", force=True)
    was_on = facts["power_state"] == "poweredOn"
    power = client.power_off(vm, p["power_off"], p["shutdown_timeout"])
    left["power_state"] = power["after"]
    result["changed"] = power["action"] != "none"
    result["power"].update(action=power["action"], after=power["after"])
    if power.get("note"):
        result["power"]["note"] = power["note"]
    state = {}
    try:
        if p["eject_media"]:
            result["media"] = client.eject_media(vm)
            result["changed"] = result["changed"] or bool(result["media"])
        facts = vsphere.vm_facts(vm)  # ejecting media changes the configuration version
        vm_out["change_version"] = config_version(facts)
        progress.update(0, capacity, phase="exporting", force=True)
        started = time.monotonic()
        export = vsphere.export_ova(
            client,
            vm,
            dest.make_sink(facts, state),
            progress=progress.update,
            description="Exported from %s by esxi2ami.migrate" % client.hostname,
            outcome=left,
        )
        duration = time.monotonic() - started
    except BaseException:
        progress.update(0, capacity, phase="failed", force=True)
        if p["restore_power_state"] and was_on:
            try:
                client.power_on(vm)
                left["power_state"] = "poweredOn"
            except vsphere.VSphereError as exc:
                module.warn("the VM could not be powered on again: %s" % exc)
        raise
    result["changed"] = True
    if not dest.record(facts):
        module.warn(
            "the file system of %s has no extended attributes: overwrite=different cannot recognise this OVA later"
            % dest.path
        )
    for disk, cap in zip(export["disks"], disks):  # noqa: B905 - same VM, same disk order
        disk["capacity"] = cap["capacity"]
    result.update(
        size=export["size"],
        disks=export["disks"],
        duration=round(duration, 3),
        throughput=round(export["size"] / duration, 1) if duration > 0 else 0.0,
    )
    if dest.is_s3:
        result["s3"] = {k: export.get(k) for k in ("bucket", "key", "etag", "version_id", "parts", "part_size")}
    if p["restore_power_state"] and was_on:
        try:
            client.power_on(vm)
            result["power"].update(restored=True, after="poweredOn")
        except vsphere.VSphereError as exc:  # the OVA is complete; say so rather than fail the export
            module.warn("the export succeeded but the VM could not be powered on again: %s" % exc)
    progress.update(export["size"], export["size"], phase="done", force=True)
    result["msg"] = "exported %d disks (%d bytes) to %s in %.1fs%s" % (
        len(export["disks"]),
        export["size"],
        p["dest"],
        duration,
        stale_note,
    )
    return result


def _terminated(signum, frame):
    """SIGTERM (an AWX job cancelled, an async timeout) unwinds like an error: upload aborted, lease given back."""
    raise SystemExit("terminated by signal %d" % signum)


def main():
    signal.signal(signal.SIGTERM, _terminated)
    argument_spec = vmware_argument_spec()
    argument_spec.update(
        name=dict(type="str"),
        uuid=dict(type="str"),
        moid=dict(type="str"),
        datacenter=dict(type="str"),
        folder=dict(type="str"),
        power_off=dict(type="str", default="graceful", choices=["graceful", "hard", "never"]),
        shutdown_timeout=dict(type="int", default=300),
        restore_power_state=dict(type="bool", default=False),
        eject_media=dict(type="bool", default=True),
        dest=dict(type="str", required=True),
        overwrite=dict(type="str", default="different", choices=["different", "always", "never"]),
        part_size=dict(type="int"),
        max_concurrency=dict(type="int", default=4),
        progress_file=dict(type="path"),
        encrypt=dict(type="bool", default=True),
        encryption_mode=dict(type="str", default="AES256", choices=["AES256", "aws:kms"]),
        encryption_kms_key_id=dict(type="str", no_log=False),
        expected_bucket_owner=dict(type="str"),
        aws_validate_certs=dict(type="bool", default=True),
    )
    module = AnsibleAWSModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("name", "uuid", "moid")],
        required_one_of=[("name", "uuid", "moid")],
    )
    p = module.params
    for opt in ("shutdown_timeout", "max_concurrency"):
        if p[opt] is not None and p[opt] < (0 if opt == "shutdown_timeout" else 1):
            module.fail_json(
                msg="%s must be %s, got %d" % (opt, ">= 0" if opt == "shutdown_timeout" else ">= 1", p[opt])
            )
    if p["part_size"] is not None and not 5 <= p["part_size"] <= 5120:
        module.fail_json(msg="part_size is in MiB and must be between 5 and 5120, got %d" % p["part_size"])
    left = {}
    try:
        with vsphere.VSphereClient(**connection_params(p)) as client:
            result = run(module, client, left)
    except (ClientError, BotoCoreError) as exc:
        module.fail_json_aws(exc, msg="S3 request for %s failed%s" % (p["dest"], left_note(left)))
    except (vsphere.VSphereError, s3_stream.S3StreamError, ova.OvaError, ValueError, OSError) as exc:
        module.fail_json(
            msg="exporting VM %s to %s failed: %s%s" % (vm_selector(p), p["dest"], to_native(exc), left_note(left)),
            vm_power_state=left.get("power_state"),
        )
    diff = result.pop("diff", None)
    if module._diff and diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
