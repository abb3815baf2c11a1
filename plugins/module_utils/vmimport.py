# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PRIVATE: EC2 VM Import helpers for esxi2ami.migrate (plain Python, no Ansible or boto3 imports).

- S3 locations: ``parse_s3_url`` (strict ``s3://bucket/key``) and ``parse_s3_location`` (``bucket``,
  ``bucket/prefix`` or ``s3://`` forms) shared by every module that reads or writes S3.
- The ``vmimport`` service role: trust and permissions policy builders that use the caller's
  partition, a reader for the locations already in a policy, and a normaliser so that two
  documents meaning the same thing compare equal.
- The import task: status classification, hints for the service's known failure messages
  (docs/troubleshooting.md shows the same table), the ClientToken, an atomic progress-file writer
  and a poll loop with a timeout.
- Retries with backoff and jitter for errors the caller classifies (bounded by time).

Everything raises :class:`VMImportError` (or a subclass) with a message meant for the user.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib
import json
import os
import random
import re
import tempfile
import time

from urllib.parse import unquote


class VMImportError(Exception):
    """A failure with a message meant for the user."""


# ---------------------------------------------------------------------------------------------
# S3 URLs and locations
# ---------------------------------------------------------------------------------------------

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_MAX_KEY_BYTES = 1024


def validate_bucket_name(bucket, what="S3 bucket name"):
    """Raise VMImportError unless `bucket` follows S3's bucket naming rules."""
    if not bucket:
        raise VMImportError("%s is empty" % what)
    problems = []
    if not _BUCKET_RE.match(bucket):
        problems.append(
            "be 3-63 characters of lowercase letters, digits, dots and hyphens, starting and ending with a letter or "
            "digit"
        )
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        problems.append("have no adjacent dots and no dot next to a hyphen")
    if _IP_RE.match(bucket):
        problems.append("not be formatted as an IP address")
    if problems:
        raise VMImportError("%s %r is not a valid S3 bucket name: it must %s" % (what, bucket, "; ".join(problems)))
    return bucket


def _validate_key(key, url, what):
    if len(key.encode("utf-8")) > _MAX_KEY_BYTES:
        raise VMImportError("%s %r: the object key is longer than S3's limit of 1024 bytes" % (what, url))
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise VMImportError(
            "%s %r: the object key contains control characters (newline, tab ...): remove them" % (what, url)
        )


def parse_s3_url(url, require_key=True, what="S3 URL"):
    """Split ``s3://bucket/key`` into ``(bucket, key)``.

    Strict on purpose: anything that is not exactly an ``s3://`` URL with a valid bucket name (and,
    when `require_key`, a key naming an object rather than a "folder") is refused with a message
    that says what is wrong and what a valid value looks like. The key is taken literally (no
    percent-decoding, ``?`` and ``#`` are part of the key), as the AWS CLI does.
    """
    example = "s3://my-bucket/exports/vm1.ova"
    if not isinstance(url, str) or not url.strip():
        raise VMImportError("%s is empty: give it as %s" % (what, example))
    if url != url.strip():
        raise VMImportError("%s %r has leading or trailing whitespace: remove it" % (what, url))
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise VMImportError("%s %r is not a URL: give it as %s" % (what, url, example))
    if scheme.lower() != "s3":
        raise VMImportError(
            "%s %r uses the scheme %r; only s3:// URLs are accepted (for example %s)" % (what, url, scheme, example)
        )
    bucket, slash, key = rest.partition("/")
    if not bucket:
        raise VMImportError("%s %r has no bucket name: give it as %s" % (what, url, example))
    validate_bucket_name(bucket, what="%s %r: bucket" % (what, url))
    if require_key:
        if not slash or not key:
            raise VMImportError("%s %r names a bucket but no object key: give it as %s" % (what, url, example))
        if key.endswith("/"):
            raise VMImportError(
                "%s %r ends with '/', which names a folder, not an object: add the file name, e.g. %s"
                % (what, url, example)
            )
    _validate_key(key, url, what)
    return bucket, key


def parse_s3_location(location, what="S3 location"):
    """A location imports may read from: ``bucket``, ``bucket/prefix``, ``s3://bucket[/prefix]``.

    Returns ``(bucket, prefix)``; the prefix may be empty (the whole bucket).
    """
    if not isinstance(location, str) or not location.strip():
        raise VMImportError("%s is empty: give a bucket name, bucket/prefix or s3://bucket/prefix" % what)
    text = location.strip()
    if "://" in text:
        bucket, key = parse_s3_url(text, require_key=False, what=what)
        return bucket, key
    if text.startswith("arn:"):
        raise VMImportError(
            "%s %r is an ARN; give the bucket name or bucket/prefix (the module builds the ARNs)" % (what, location)
        )
    bucket, _slash, prefix = text.partition("/")
    validate_bucket_name(bucket, what="%s %r: bucket" % (what, location))
    _validate_key(prefix, location, what)
    return bucket, prefix


def normalize_locations(locations):
    """Sorted, de-duplicated ``(bucket, prefix)`` pairs with locations covered by another removed.

    ``bucket/a`` grants ``bucket/a*``, so it covers ``bucket/a/b``; an empty prefix covers the bucket.
    """
    unique = sorted(set((b, p) for b, p in locations))
    kept = []
    for bucket, prefix in unique:
        covered = any(b == bucket and p != prefix and prefix.startswith(p) for b, p in unique)
        if not covered:
            kept.append((bucket, prefix))
    return kept


def format_location(bucket, prefix):
    return "%s/%s" % (bucket, prefix) if prefix else bucket


# ---------------------------------------------------------------------------------------------
# Partitions and ARNs
# ---------------------------------------------------------------------------------------------

PARTITIONS = ("aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "aws-iso-e", "aws-iso-f", "aws-eusc")
_ARN_RE = re.compile(
    r"^arn:(?P<partition>[a-z-]+):(?P<service>[a-z0-9-]+):(?P<region>[a-z0-9-]*):(?P<account>\d{12}|aws|):(?P<resource>.+)$"
)
_KMS_KEY_RE = re.compile(r"^key/[A-Za-z0-9-]+$")


def parse_arn(arn):
    """Return a dict with partition, service, region, account and resource, or raise."""
    match = _ARN_RE.match(arn or "")
    if not match:
        raise VMImportError("%r is not an ARN (arn:<partition>:<service>:<region>:<account>:<resource>)" % (arn,))
    parts = match.groupdict()
    if parts["partition"] not in PARTITIONS:
        raise VMImportError(
            "%r: unknown AWS partition %r (expected one of %s)" % (arn, parts["partition"], ", ".join(PARTITIONS))
        )
    return parts


def caller_partition_and_account(identity):
    """From an STS GetCallerIdentity response: ``(partition, account_id)``."""
    arn = identity.get("Arn", "")
    parts = parse_arn(arn)
    account = identity.get("Account") or parts["account"]
    return parts["partition"], account


def validate_kms_key_arn(arn, partition):
    """KMS grants in an IAM policy only work on key ARNs (not aliases or bare key ids)."""
    try:
        parts = parse_arn(arn)
    except VMImportError:
        parts = {"service": None, "resource": "", "region": ""}
    if parts["service"] != "kms" or not _KMS_KEY_RE.match(parts["resource"]) or not parts["region"]:
        raise VMImportError(
            "kms_key_arns: %r is not a KMS key ARN; use the key's ARN, e.g. "
            "arn:%s:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab (aliases and key ids do "
            "not work in an IAM policy)" % (arn, partition)
        )
    if parts["partition"] != partition:
        raise VMImportError(
            "kms_key_arns: %r is in partition %r but the caller is in %r" % (arn, parts["partition"], partition)
        )
    return arn


def role_arn(partition, account, name, path="/"):
    return "arn:%s:iam::%s:role%s%s" % (partition, account, path or "/", name)


# ---------------------------------------------------------------------------------------------
# The vmimport role's policies
# ---------------------------------------------------------------------------------------------

SERVICE_PRINCIPAL = "vmie.amazonaws.com"
EXTERNAL_ID = "vmimport"
S3_BUCKET_ACTIONS = ["s3:GetBucketLocation", "s3:ListBucket"]
S3_OBJECT_ACTIONS = ["s3:GetObject"]
EC2_ACTIONS = ["ec2:CopySnapshot", "ec2:Describe*", "ec2:ModifySnapshotAttribute", "ec2:RegisterImage"]
KMS_ACTIONS = [
    "kms:CreateGrant",
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:Encrypt",
    "kms:GenerateDataKey*",
    "kms:ReEncrypt*",
]
LICENSE_MANAGER_ACTIONS = [
    "license-manager:GetLicenseConfiguration",
    "license-manager:ListLicenseSpecificationsForResource",
    "license-manager:UpdateLicenseSpecificationsForResource",
]
SID_BUCKETS = "VmImportBuckets"
SID_OBJECTS = "VmImportObjects"
SID_EC2 = "VmImportEc2"
SID_KMS = "VmImportKms"
SID_LICENSE_MANAGER = "VmImportLicenseManager"


def trust_policy(partition, account):
    """Only the VM Import service, with its ExternalId, acting for this account, may assume the role."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": SERVICE_PRINCIPAL},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"sts:Externalid": EXTERNAL_ID, "aws:SourceAccount": account},
                    "ArnLike": {"aws:SourceArn": "arn:%s:vmie:*:%s:*" % (partition, account)},
                },
            }
        ],
    }


def bucket_arn(partition, bucket):
    return "arn:%s:s3:::%s" % (partition, bucket)


def objects_arn(partition, bucket, prefix):
    return "arn:%s:s3:::%s/%s*" % (partition, bucket, prefix)


def permissions_policy(partition, locations, kms_key_arns=(), license_manager=False):
    """The least-privilege inline policy: bucket-level actions on bucket ARNs, reads under each
    prefix only, the EC2 actions the service needs (on ``*``: it creates the resources), KMS only on
    the given keys, license-manager only when asked."""
    locations = normalize_locations(locations)
    if not locations:
        raise VMImportError("s3_locations: at least one S3 bucket or bucket/prefix is required for the vmimport role")
    buckets = sorted(set(b for b, _p in locations))
    statements = [
        {
            "Sid": SID_BUCKETS,
            "Effect": "Allow",
            "Action": list(S3_BUCKET_ACTIONS),
            "Resource": [bucket_arn(partition, b) for b in buckets],
        },
        {
            "Sid": SID_OBJECTS,
            "Effect": "Allow",
            "Action": list(S3_OBJECT_ACTIONS),
            "Resource": [objects_arn(partition, b, p) for b, p in locations],
        },
        {"Sid": SID_EC2, "Effect": "Allow", "Action": list(EC2_ACTIONS), "Resource": "*"},
    ]
    keys = sorted(set(kms_key_arns or ()))
    if keys:
        statements.append({"Sid": SID_KMS, "Effect": "Allow", "Action": list(KMS_ACTIONS), "Resource": keys})
    if license_manager:
        statements.append(
            {"Sid": SID_LICENSE_MANAGER, "Effect": "Allow", "Action": list(LICENSE_MANAGER_ACTIONS), "Resource": "*"}
        )
    return {"Version": "2012-10-17", "Statement": statements}


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def load_policy(document):
    """A policy document as a dict, from a dict, a JSON string or a URL-encoded JSON string (IAM's wire form)."""
    if document is None:
        return None
    if isinstance(document, dict):
        return document
    text = document
    if not text.lstrip().startswith("{"):
        text = unquote(text)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise VMImportError("policy document is not valid JSON: %s" % exc) from None


def policy_grants(document):
    """What an existing vmimport policy grants: ``(locations, kms_key_arns, license_manager)``.

    Reads any statement (not only ours) that allows s3:GetObject on object ARNs, KMS actions on key
    ARNs or license-manager actions, so locations added by hand are kept too.
    """
    doc = load_policy(document) or {}
    locations, keys, license_manager = [], [], False
    for st in _as_list(doc.get("Statement")):
        if not isinstance(st, dict) or st.get("Effect") != "Allow":
            continue
        actions = [a.lower() for a in _as_list(st.get("Action"))]
        resources = _as_list(st.get("Resource"))
        if "s3:getobject" in actions or "s3:*" in actions:
            for res in resources:
                m = re.match(r"^arn:[a-z-]+:s3:::([^/]+)/(.*)$", res)
                if m:
                    prefix = m.group(2)
                    if prefix.endswith("*"):
                        prefix = prefix[:-1]
                    if "*" in prefix or "?" in prefix:
                        continue  # a pattern we did not write; leave it out of our list rather than guess
                    locations.append((m.group(1), prefix))
        if any(a.startswith("kms:") for a in actions):
            keys.extend(r for r in resources if r.startswith("arn:") and ":kms:" in r)
        if any(a.startswith("license-manager:") for a in actions):
            license_manager = True
    return normalize_locations(locations), sorted(set(keys)), license_manager


def _normalize_value(value, lower=False):
    if isinstance(value, dict):
        return dict((k.lower() if lower else k, _normalize_value(v)) for k, v in value.items())
    items = _as_list(value)
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append(_normalize_value(item))
        else:
            out.append(str(item).lower() if lower else str(item))
    return sorted(out, key=lambda x: json.dumps(x, sort_keys=True))


def normalize_policy(document):
    """A canonical form for comparison: lists everywhere, sorted, action and condition-key names
    lower-cased (IAM treats them case-insensitively), statements in a stable order."""
    doc = load_policy(document)
    if doc is None:
        return None
    statements = []
    for st in _as_list(doc.get("Statement")):
        norm = {}
        for key, value in st.items():
            if key in ("Action", "NotAction"):
                norm[key] = _normalize_value(value, lower=True)
            elif key in ("Resource", "NotResource"):
                norm[key] = _normalize_value(value)
            elif key in ("Principal", "NotPrincipal"):
                if value == "*":
                    norm[key] = "*"
                else:
                    norm[key] = dict((k, _normalize_value(v)) for k, v in value.items())
            elif key == "Condition":
                norm[key] = dict(
                    (op, dict((ck.lower(), _normalize_value(cv)) for ck, cv in conds.items()))
                    for op, conds in value.items()
                )
            else:
                norm[key] = value
        statements.append(norm)
    statements.sort(key=lambda s: json.dumps(s, sort_keys=True))
    return {"Version": doc.get("Version", "2008-10-17"), "Statement": statements}


def policies_equal(a, b):
    return normalize_policy(a) == normalize_policy(b)


# ---------------------------------------------------------------------------------------------
# Import source: formats and ClientToken
# ---------------------------------------------------------------------------------------------

DISK_FORMATS = ("ova", "vmdk", "vhd", "vhdx", "raw")
_EXTENSION_FORMATS = {
    ".ova": "ova",
    ".vmdk": "vmdk",
    ".vhd": "vhd",
    ".vhdx": "vhdx",
    ".raw": "raw",
    ".img": "raw",
}


def infer_format(key, what="s3_url"):
    """The disk format from an object key's extension (case-insensitive), or a clear error."""
    lowered = key.lower()
    for ext, fmt in _EXTENSION_FORMATS.items():
        if lowered.endswith(ext):
            return fmt
    raise VMImportError(
        "%s: cannot tell the disk format of %r from its name (known extensions: %s); set format to one of %s"
        % (what, key, ", ".join(sorted(_EXTENSION_FORMATS)), ", ".join(DISK_FORMATS))
    )


def client_token(name, disk_containers, attempt=0):
    """Deterministic ImportImage ClientToken (64 hex characters, the API's maximum).

    Hashes the import's name, its source (the disk containers as sent) and the attempt number, so a
    retried or re-run request for the same import is idempotent, while a new attempt after a failed
    task (attempt = number of earlier unusable tasks with this name) gets a new token.
    """
    payload = json.dumps(
        {"name": name, "disk_containers": disk_containers, "attempt": int(attempt)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# The import task
# ---------------------------------------------------------------------------------------------

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"


def classify(task):
    """Map an import task to RUNNING, SUCCEEDED or FAILED.

    ``active`` is running; ``completed`` with an ImageId succeeded; ``deleting``/``deleted`` (failed
    or cancelled) is failed at once, never waited on. A ``completed`` task without an ImageId is a
    failure too (there is nothing to use). Unknown statuses are treated as running.
    """
    status = (task.get("Status") or "").lower()
    if status == "completed":
        return SUCCEEDED if task.get("ImageId") else FAILED
    if status in ("deleting", "deleted"):
        return FAILED
    return RUNNING


def task_progress(task):
    """The task's Progress as an int, or None when the service does not report one."""
    try:
        return int(task.get("Progress"))
    except (TypeError, ValueError):
        return None


def task_tags(task):
    return dict((t.get("Key"), t.get("Value")) for t in task.get("Tags") or [])


def task_snapshot_ids(task):
    return [d["SnapshotId"] for d in task.get("SnapshotDetails") or [] if d.get("SnapshotId")]


# Known StatusMessage fragments of failed tasks (and ImportImage refusals) with what to do.
# docs/troubleshooting.md shows exactly this table (a unit test keeps them in step).
KNOWN_MESSAGES = (
    (
        "Unknown OS / Missing OS files",
        "The service did not find a supported operating system on the first disk. Import a 64-bit Linux that boots "
        "with the distribution's stock kernel and GRUB from the first disk; run the esxi2ami.migrate.guest_prepare "
        "role on the guest before exporting.",
    ),
    (
        "Unsupported OVA format",
        "The OVA is not laid out as VM Import expects: the .ovf descriptor must be the first tar member and every "
        "disk it references must be present. Check it with esxi2ami.migrate.ova_info (validate: true) and re-export "
        "with esxi2ami.migrate.vsphere_ova_export.",
    ),
    (
        "Unsupported VMDK File Format",
        "A disk is not a stream-optimized VMDK. Export the VM again with esxi2ami.migrate.vsphere_ova_export (it "
        "always writes stream-optimized disks) or convert with qemu-img -O vmdk -o subformat=streamOptimized.",
    ),
    (
        "We do not have access to the given resource",
        "The vmimport role cannot read the S3 object. Run esxi2ami.migrate.ec2_vmimport_role with the bucket and "
        "prefix of the OVA in s3_locations (and the object's SSE-KMS key in kms_key_arns), and check the bucket "
        "policy does not deny the role.",
    ),
    (
        "does not exist or does not have sufficient permissions",
        "The VM Import service cannot use the service role. Create or update it with "
        "esxi2ami.migrate.ec2_vmimport_role (trust policy for vmie.amazonaws.com with ExternalId vmimport, access "
        "to the bucket); the caller also needs "
        "iam:PassRole on it. A role created moments ago can take about a minute to be usable.",
    ),
    (
        "not local to the region",
        "The S3 bucket is in another region than the import. Run the import in the bucket's region (region option or "
        "AWS_REGION) or copy the OVA to a bucket in the target region.",
    ),
    (
        "No valid partitions",
        "The first disk has no partition table or filesystem the service can read. Make sure the boot disk is the "
        "first disk of the VM and uses MBR or GPT with a supported filesystem (ext2/3/4, XFS, JFS, Btrfs).",
    ),
    (
        "Unsupported kernel version",
        "The guest boots a kernel the service does not support. Install the distribution's stock kernel and make it "
        "the default GRUB entry (esxi2ami.migrate.guest_prepare does this), then export again.",
    ),
    (
        "Could not read fstab",
        "The guest's /etc/fstab could not be parsed or names devices that do not exist. Refer to filesystems by UUID "
        "or LABEL, remove stale entries, then export again.",
    ),
    (
        "Multiple directories found",
        "The service found more than one operating system root (dual boot or a leftover root filesystem on another "
        "disk). Import only the disks of one operating system.",
    ),
    (
        "Logical volume group activation failed",
        "An LVM volume group could not be activated: include every disk of the volume group in the export and make "
        "sure no two volume groups share a name.",
    ),
    (
        "Footers not identical",
        "A VMDK is damaged or truncated. Export the VM again; do not edit the OVA after export.",
    ),
    (
        "Uncompressed data has invalid length",
        "A stream-optimized VMDK is damaged (a grain does not decompress to its size). Export the VM again.",
    ),
    (
        "unsupported compression algorithm",
        "A VMDK uses a compression the service does not read. Export it as a stream-optimized VMDK with "
        "esxi2ami.migrate.vsphere_ova_export.",
    ),
    (
        "exceeds the maximum",
        "VM Import takes at most 21 volumes per image. Detach data disks before export and move their data "
        "separately (for example with ImportSnapshot).",
    ),
)


def hint_for(message):
    """The hint for the first known message fragment found (case-insensitively) in `message`, or None."""
    if not message:
        return None
    lowered = message.lower()
    for fragment, hint in KNOWN_MESSAGES:
        if fragment.lower() in lowered:
            return hint
    return None


def is_role_propagation_error(code, message):
    """ImportImage refuses a role IAM has not propagated yet with this message (code InvalidParameter)."""
    text = (message or "").lower()
    return "service role" in text and "does not exist or does not have sufficient permissions" in text


class ImportTaskFailed(VMImportError):
    def __init__(self, task, hint=None):
        self.task = task
        self.hint = hint
        message = task.get("StatusMessage") or "(no status message)"
        text = "import task %s ended with status %s: %s" % (task.get("ImportTaskId"), task.get("Status"), message)
        if hint:
            text += " Hint: %s" % hint
        VMImportError.__init__(self, text)


class ImportTaskTimeout(VMImportError):
    def __init__(self, task, timeout, name=None):
        self.task = task
        progress = task_progress(task)
        text = (
            "import task %s is still %s after wait_timeout=%ss (last status message: %r%s). The task keeps running in "
            "AWS. To resume, run the same task again (same name%s): it finds the task and waits on it instead of "
            "starting a new import; use state: absent to cancel it instead."
            % (
                task.get("ImportTaskId"),
                task.get("Status"),
                int(timeout),
                task.get("StatusMessage") or "",
                ", progress %s%%" % progress if progress is not None else "",
                " %r" % name if name else "",
            )
        )
        VMImportError.__init__(self, text)


def default_progress_path(remote_tmp, name, module="ec2_import_image"):
    """``<remote_tmp>/esxi2ami.migrate/<module>-<name>.json``; remote_tmp as Ansible's (``~/.ansible/tmp``)."""
    base = os.path.expanduser(os.path.expandvars(remote_tmp or "~/.ansible/tmp"))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100]
    return os.path.join(base, "esxi2ami.migrate", "%s-%s.json" % (module, safe))


class ProgressFile(object):
    """A small JSON file a role can poll while a module waits; replaced atomically on each write."""

    def __init__(self, path, clock=time.monotonic):
        self.path = path
        self.clock = clock
        self.started = clock()
        self.last = None
        self.error = None

    def elapsed(self):
        return round(self.clock() - self.started, 1)

    def write(self, **fields):
        """Replace the file with `fields` (+ elapsed, updated).

        The first write raises VMImportError when the file cannot be written, so a module can fail
        before it starts anything; later failures (a full disk mid-wait) only set ``error``: progress
        is for watching, it must not abort an import.
        """
        if not self.path:
            return None
        record = dict(fields)
        record["elapsed"] = self.elapsed()
        record["updated"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self._replace(record)
        except OSError as exc:
            error = "progress_file %s cannot be written: %s" % (self.path, exc)
            if self.last is None:
                raise VMImportError(error + "; give a writable path, or an empty string to write none") from None
            self.error = error
            return None
        self.last = record
        return record

    def _replace(self, record):
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=".progress-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle, sort_keys=True)
                handle.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def task(self, task, phase, name=None, extra=None):
        """Record an import task's status, message and percent."""
        record = {
            "phase": phase,
            "name": name,
            "import_task_id": task.get("ImportTaskId"),
            "status": task.get("Status"),
            "status_message": task.get("StatusMessage"),
            "progress": task_progress(task),
            "percent": task_progress(task),  # the name export progress files use (job_progress reads it)
        }
        if extra:
            record.update(extra)
        return self.write(**record)


def wait_for_task(
    describe, task_id, timeout, poll_interval, progress=None, name=None, clock=time.monotonic, sleep=time.sleep
):
    """Poll `describe(task_id) -> task dict` until the task ends.

    Returns the completed task. Raises ImportTaskFailed (with the hint) on the first poll that shows
    ``deleting``/``deleted``, and ImportTaskTimeout once `timeout` seconds have passed with the task
    still active (it is not cancelled).
    """
    deadline = clock() + timeout
    while True:
        task = describe(task_id)
        state = classify(task)
        if progress is not None:
            progress.task(task, {RUNNING: "importing", SUCCEEDED: "imported", FAILED: "failed"}[state], name=name)
        if state == SUCCEEDED:
            return task
        if state == FAILED:
            raise ImportTaskFailed(task, hint_for(task.get("StatusMessage")))
        remaining = deadline - clock()
        if remaining <= 0:
            raise ImportTaskTimeout(task, timeout, name=name)
        sleep(max(0.0, min(poll_interval, remaining)))


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------


class RetryRule(object):
    """Retry an error kind with exponential backoff and jitter, for at most `budget` seconds."""

    def __init__(self, name, delay=2.0, max_delay=20.0, budget=60.0, backoff=2.0):
        self.name = name
        self.delay = delay
        self.max_delay = max_delay
        self.budget = budget
        self.backoff = backoff


def error_code_and_message(exc):
    """``(code, message)`` of a botocore ClientError (or anything shaped like one), else ``(None, str(exc))``."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        return err.get("Code"), err.get("Message") or str(exc)
    return None, str(exc)


def call_with_retries(func, rule_for, clock=time.monotonic, sleep=time.sleep, rand=random.random, on_retry=None):
    """Call `func()`; when it raises and `rule_for(exc)` gives a RetryRule, sleep and try again.

    Each rule keeps its own clock from the first time it matched: once its budget is spent the last
    error is raised. Sleeps are ``base * (0.5 + rand() / 2)`` with
    ``base = min(max_delay, delay * backoff ** n)``, never past the budget (equal jitter: every pause
    is at least half the nominal delay). `on_retry(rule, exc, seconds)` is called before each sleep.
    """
    started = {}
    attempts = {}
    while True:
        try:
            return func()
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not retryable
            rule = rule_for(exc)
            if rule is None:
                raise
            now = clock()
            first = started.setdefault(rule.name, now)
            n = attempts.get(rule.name, 0)
            attempts[rule.name] = n + 1
            remaining = rule.budget - (now - first)
            if remaining <= 0:
                raise
            base = min(rule.max_delay, rule.delay * (rule.backoff**n))
            pause = base * (0.5 + rand() / 2.0)
            pause = min(pause, remaining)
            if on_retry is not None:
                on_retry(rule, exc, pause)
            sleep(pause)
