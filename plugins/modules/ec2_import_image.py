#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ec2_import_image
short_description: Import a VM disk image into an AMI with EC2 VM Import, wait for it and tag everything
version_added: 0.1.0
description:
  - Starts an EC2 VM Import task (ImportImage) for an OVA or disk images in S3, waits until it ends while recording
    progress in a file, and on success tags the AMI and B(every) snapshot with C(Name) and O(tags).
  - Fails as soon as the task fails (status C(deleting) or C(deleted)) with the service's status message and a hint
    from the table of known messages (docs/troubleshooting.md), instead of waiting out the timeout.
  - On timeout, fails with the task id, its last status and how to resume; the task keeps running.
  - The task is found again by O(name) (the task's C(Name) tag). An active task is waited on instead of starting
    another import, a completed task whose AMI still exists is reported unchanged, and a failed task lets a new
    import start. ImportImage gets a ClientToken derived from O(name), the request and the attempt number, so a
    retried request never starts two tasks.
  - Retries throttling, C(ResourceCountLimitExceeded) (waits for a free slot, up to O(limit_wait_timeout)) and the
    refusal of a role IAM has not propagated yet (up to about 90 seconds), with backoff and jitter.
  - Optionally names the AMI (O(ami_name), by CopyImage; the intermediate image and its snapshots are removed and
    encryption is kept), requires IMDSv2 on it (O(imds_support)) and deletes the source objects (O(delete_source)).
author:
  - esxi2ami.migrate maintainers (@esxi2ami)
options:
  name:
    description:
      - Identity of the import. It is the import task's C(Name) tag (the module finds the task by it on later runs),
        part of the ClientToken, and the C(Name) tag of the AMI and its snapshots.
    type: str
    required: true
  s3_url:
    description:
      - The disk image in S3, as C(s3://bucket/key).
      - Mutually exclusive with O(s3_bucket)/O(s3_key) and O(disk_containers).
    type: str
  s3_bucket:
    description:
      - Bucket of the disk image; use with O(s3_key) instead of O(s3_url).
    type: str
  s3_key:
    description:
      - Key of the disk image in O(s3_bucket).
    type: str
  format:
    description:
      - Format of the disk image given by O(s3_url) or O(s3_bucket)/O(s3_key).
      - Inferred from the key's extension (C(.ova), C(.vmdk), C(.vhd), C(.vhdx), C(.raw), C(.img)) when not set.
    type: str
    choices: [ova, vmdk, vhd, vhdx, raw]
  disk_containers:
    description:
      - Several disk images (one per volume, the boot disk first) instead of one image.
      - An OVA must be the only disk container.
    type: list
    elements: dict
    suboptions:
      s3_url:
        description:
          - The disk image as C(s3://bucket/key).
          - Or use O(disk_containers[].s3_bucket) and O(disk_containers[].s3_key).
        type: str
      s3_bucket:
        description: Bucket of the disk image.
        type: str
      s3_key:
        description: Key of the disk image.
        type: str
      format:
        description: Format of the disk image; inferred from the key's extension when not set.
        type: str
        choices: [ova, vmdk, vhd, vhdx, raw]
      device_name:
        description: Block device name for the disk, for example C(/dev/sda1).
        type: str
      description:
        description: Description of the disk image.
        type: str
  description:
    description:
      - Description of the import task and of the AMI.
    type: str
  architecture:
    description:
      - Architecture of the VM. The service detects it when not set.
    type: str
    choices: [x86_64, arm64, i386]
  boot_mode:
    description:
      - Boot mode of the VM. C(uefi) for GPT/UEFI guests. The service detects it when not set.
    type: str
    choices: [legacy-bios, uefi]
  platform:
    description:
      - Operating system of the VM. The service detects it when not set.
    type: str
    choices: [Linux, Windows]
  license_type:
    description:
      - License type of the AMI. Linux images accept C(BYOL) only. Mutually exclusive with O(usage_operation).
    type: str
    choices: [AWS, BYOL]
  usage_operation:
    description:
      - Usage operation value of the AMI (for example C(RunInstances:0010)). Mutually exclusive with O(license_type).
    type: str
  license_specifications:
    description:
      - License configurations to associate with the AMI.
      - The service role needs O(esxi2ami.migrate.ec2_vmimport_role#module:license_manager=true).
    type: list
    elements: dict
    suboptions:
      license_configuration_arn:
        description: ARN of a license configuration.
        type: str
        required: true
  encrypted:
    description:
      - Encrypt the AMI's snapshots. Uses the account's default EBS key unless O(kms_key_id) is set.
    type: bool
    default: false
  kms_key_id:
    description:
      - Symmetric KMS key (id, ARN, alias or alias ARN) for the encrypted snapshots. Requires O(encrypted=true).
    type: str
  role_name:
    description:
      - The service role VM Import uses, when not C(vmimport). Create it with M(esxi2ami.migrate.ec2_vmimport_role).
    type: str
  tags:
    description:
      - Tags for the import task, the AMI and every snapshot.
      - The AMI and snapshots get C(Name=)O(name) unless a C(Name) key is given here. The task's C(Name) tag is
        always O(name), because later runs find the task by it.
      - Tags are added or updated; other tags on the AMI and snapshots are left alone.
      - Keys starting with C(aws:) are refused, and so are tags over EC2's limits (50 tags per resource with
        C(Name), keys of 1-128 characters, values of up to 256).
    type: dict
    default: {}
    aliases: [resource_tags]
  wait:
    description:
      - Wait until the task ends. When V(false), return right after starting (or finding) the task; run the module
        again later (with O(wait=true)) to wait for it and tag the results.
    type: bool
    default: true
  wait_timeout:
    description:
      - How long to wait for the task, in seconds. On timeout the module fails and the task keeps running.
    type: int
    default: 7200
  poll_interval:
    description:
      - Seconds between two looks at the task.
    type: float
    default: 15
  limit_wait_timeout:
    description:
      - How long to keep retrying ImportImage while the account is at its quota of active import tasks
        (C(ResourceCountLimitExceeded)), in seconds.
    type: int
    default: 900
  max_active_imports:
    description:
      - Before starting a new import, wait until fewer than this many import tasks are active in the account and
        region (any task, not only this collection's), for up to O(limit_wait_timeout) seconds.
      - Use it to run many migrations in parallel (Ansible forks) without exceeding a share of the service's quota
        of active import tasks; V(0) leaves only the service's own limit (C(ResourceCountLimitExceeded) is retried).
      - Parallel runs check at nearly the same time, so the cap can be exceeded briefly by a task or two; the
        service's quota is still enforced by the service.
    type: int
    default: 0
  progress_file:
    description:
      - A JSON file the module rewrites (atomically) at every poll, for a role to poll and print while the module
        runs with C(async) (see M(esxi2ami.migrate.job_progress)). Keys are C(phase), C(name), C(import_task_id),
        C(status), C(status_message), C(progress) and C(percent) (the same number), C(elapsed) (seconds) and
        C(updated) (UTC).
      - Defaults to C(esxi2ami.migrate/ec2_import_image-<name>.json) in the Ansible remote temp dir
        (C(~/.ansible/tmp)). Set to an empty string to write none.
    type: path
  delete_source:
    description:
      - Delete the source objects from S3 once the AMI is ready.
    type: bool
    default: false
  ami_name:
    description:
      - Name for the AMI. VM Import cannot name an AMI, so the module copies the imported image with this name
        (CopyImage, keeping encryption and the KMS key), then deregisters the intermediate image and deletes its
        snapshots.
      - 3-128 characters, only letters, digits, spaces and C(\( \) [ ] . / - ' @ _) (what EC2 accepts).
    type: str
  imds_support:
    description:
      - Set to V(v2.0) to make instances launched from the AMI require IMDSv2. Cannot be undone on the AMI.
    type: str
    choices: [v2.0]
  cancel_reason:
    description:
      - Reason recorded when O(state=absent) cancels an active task.
    type: str
  state:
    description:
      - V(present) imports (or resumes, or reports) the image.
      - V(absent) cancels an active import task with this O(name). A finished task or an AMI is not touched.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - esxi2ami.migrate.attributes
  - esxi2ami.migrate.attributes.check_mode_full
  - esxi2ami.migrate.attributes.diff_mode_full
  - esxi2ami.migrate.attributes.idempotent
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
notes:
  - The caller needs C(ec2:ImportImage), C(ec2:DescribeImportImageTasks), C(ec2:CancelImportTask),
    C(ec2:DescribeImages), C(ec2:CreateTags), C(ec2:DescribeTags), C(iam:PassRole) on the service role, and for the
    options that use them C(ec2:CopyImage), C(ec2:DeregisterImage), C(ec2:DeleteSnapshot),
    C(ec2:ModifyImageAttribute), C(s3:DeleteObject) and C(s3:GetObject) (HeadObject).
  - Before a new import (also in check mode) the module reads each bucket's region (C(s3:GetBucketLocation)) and
    refuses a bucket that does not exist or is not in the import's region; without that permission it only warns.
  - Check mode reads the current state and predicts the result; it never calls ImportImage or changes anything.
seealso:
  - module: esxi2ami.migrate.ec2_vmimport_role
  - name: VM Import/Export user guide
    description: What the service accepts.
    link: https://docs.aws.amazon.com/vm-import/latest/userguide/what-is-vmimport.html
"""

EXAMPLES = r"""
- name: Import an OVA, wait, tag the AMI and all its snapshots
  esxi2ami.migrate.ec2_import_image:
    name: web01
    s3_url: s3://migration-bucket/exports/web01.ova
    boot_mode: legacy-bios
    tags:
      migrated-from: vcenter01
  register: imported

- name: Named, encrypted, IMDSv2-only AMI; remove the OVA afterwards
  esxi2ami.migrate.ec2_import_image:
    name: db01
    s3_bucket: migration-bucket
    s3_key: exports/db01.ova
    encrypted: true
    kms_key_id: alias/migrations
    ami_name: db01-migrated
    imds_support: v2.0
    delete_source: true
    wait_timeout: 10800

- name: Start in the background and poll the progress file (what the vm_to_ami role does)
  esxi2ami.migrate.ec2_import_image:
    name: app01
    s3_url: s3://migration-bucket/exports/app01.ova
    progress_file: /tmp/app01-import.json
  async: 14400
  poll: 0
  register: import_job

- name: Two raw disks, boot disk first
  esxi2ami.migrate.ec2_import_image:
    name: legacy02
    disk_containers:
      - s3_url: s3://migration-bucket/legacy02/disk0.raw
        device_name: /dev/sda1
      - s3_url: s3://migration-bucket/legacy02/disk1.raw
        device_name: /dev/sdb

- name: Cancel the import task of web01 if it is still running
  esxi2ami.migrate.ec2_import_image:
    name: web01
    state: absent
    cancel_reason: wrong source
"""

RETURN = r"""
import_task_id:
  description: Id of the import task (empty in check mode before a task exists).
  returned: always
  type: str
  sample: import-ami-0123456789abcdef0
image_id:
  description: Id of the final AMI (the copy when O(ami_name) is set).
  returned: when the task completed
  type: str
  sample: ami-0123456789abcdef0
snapshot_ids:
  description: Ids of every snapshot of the final AMI, in block device order.
  returned: when the task completed
  type: list
  elements: str
  sample: [snap-0123456789abcdef0, snap-0fedcba9876543210]
status:
  description: Status of the task, C(active), C(completed), C(deleting) or C(deleted), or C(absent) when no task exists.
  returned: always
  type: str
  sample: completed
status_message:
  description: The task's last StatusMessage (the failure message on failure).
  returned: always
  type: str
  sample: converting
progress:
  description: The task's last reported percent, when it reports one.
  returned: always
  type: int
hint:
  description: What to do about a failed task's status message, from the table of known messages.
  returned: on failure, when the message is known
  type: str
elapsed:
  description: Seconds this run spent (waiting included).
  returned: always
  type: float
  sample: 734.2
resumed:
  description: Whether the run found an active task by O(name) and waited on it instead of starting one.
  returned: when O(state=present)
  type: bool
task:
  description: The import task as DescribeImportImageTasks returns it, with snake_case keys (tags as a dict).
  returned: when a task exists
  type: dict
  contains:
    import_task_id:
      description: Task id.
      type: str
    status:
      description: Task status.
      type: str
    status_message:
      description: Status message.
      type: str
    progress:
      description: Percent done (as the service reports it, a string).
      type: str
    image_id:
      description: The imported (intermediate when O(ami_name) is set) AMI.
      type: str
    snapshot_details:
      description: One entry per disk, with snapshot_id, device_name, disk_image_size, format, status, user_bucket.
      type: list
      elements: dict
    tags:
      description: The task's tags.
      type: dict
image:
  description: The final AMI, with snake_case keys and tags as a dict.
  returned: when the task completed
  type: dict
  contains:
    image_id:
      description: AMI id.
      type: str
    name:
      description: AMI name (O(ami_name), or the name the service gave it).
      type: str
    tags:
      description: The AMI's tags.
      type: dict
    block_device_mappings:
      description: Devices and snapshots.
      type: list
      elements: dict
ami_name:
  description: Name of the final AMI.
  returned: when the task completed
  type: str
tags:
  description: The tags applied to the AMI and every snapshot (C(Name) included).
  returned: when O(state=present)
  type: dict
  sample: {"Name": "web01", "migrated-from": "vcenter01"}
sources:
  description: The source objects as C(s3://) URLs.
  returned: when O(state=present)
  type: list
  elements: str
source_deleted:
  description: The source objects deleted by this run (O(delete_source)).
  returned: when O(delete_source=true)
  type: list
  elements: str
import_retries:
  description:
    - How often this run retried ImportImage, by reason (C(role propagation), C(import slot)). Throttling retries
      are not counted.
  returned: when O(state=present)
  type: dict
  sample: {"role propagation": 2}
progress_file:
  description: Path of the progress file (empty when disabled).
  returned: always
  type: str
"""

import datetime  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.common.dict_transformations import camel_dict_to_snake_dict  # noqa: E402

from ansible_collections.amazon.aws.plugins.module_utils.botocore import is_boto3_error_code  # noqa: E402
from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule  # noqa: E402
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry  # noqa: E402
from ansible_collections.amazon.aws.plugins.module_utils.tagging import (  # noqa: E402
    ansible_dict_to_boto3_tag_list,
    boto3_tag_list_to_ansible_dict,
)

from ansible_collections.esxi2ami.migrate.plugins.module_utils.vmimport import (  # noqa: E402
    FAILED,
    RUNNING,
    SUCCEEDED,
    ImportTaskFailed,
    ImportTaskTimeout,
    ProgressFile,
    RetryRule,
    VMImportError,
    call_with_retries,
    classify,
    client_token,
    default_progress_path,
    error_code_and_message,
    hint_for,
    infer_format,
    is_role_propagation_error,
    parse_s3_url,
    task_progress,
    task_snapshot_ids,
    task_tags,
    validate_bucket_name,
    wait_for_task,
)

try:
    import botocore
except ImportError:
    pass  # handled by AnsibleAWSModule

ROLE_PROPAGATION_BUDGET = 90.0
# AWS: 3-128 characters, letters, digits, ( ) [ ] space . / - ' @ _ (fullmatch: no trailing newline slips through).
AMI_NAME_RE = re.compile(r"[A-Za-z0-9()\[\] ./'@_-]{3,128}")
# EC2 tag limits per resource: 50 tags, keys 1-128 characters, values up to 256.
MAX_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256


def tag_limits_problem(tags, name):
    """A message naming the tags over EC2's limits (the AMI and snapshots also get Name), or None."""
    wanted = dict({"Name": name}, **dict((str(k), "" if v is None else str(v)) for k, v in tags.items()))
    problems = []
    if len(wanted) > MAX_TAGS:
        problems.append(
            "%d tags (Name included) but EC2 allows %d per resource: drop %d"
            % (len(wanted), MAX_TAGS, len(wanted) - MAX_TAGS)
        )
    for key, value in wanted.items():
        if not key or len(key) > MAX_TAG_KEY:
            problems.append("key %r is %d characters; keys must be 1-%d" % (key[:40], len(key), MAX_TAG_KEY))
        if len(value) > MAX_TAG_VALUE:
            problems.append(
                "the value of %r is %d characters; values may have up to %d" % (key, len(value), MAX_TAG_VALUE)
            )
    if not problems:
        return None
    return "tags are over EC2's tag limits: %s. Shorten or remove those tags" % "; ".join(problems)


def _aws_errors():
    return (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)


def _jsonable(value):
    """Datetimes as ISO 8601 strings, recursively (boto3 returns datetime objects)."""
    if isinstance(value, dict):
        return dict((k, _jsonable(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return value


def snake_task(task):
    if not task:
        return {}
    task = dict(task)
    tags = boto3_tag_list_to_ansible_dict(task.pop("Tags", []) or [])
    out = camel_dict_to_snake_dict(_jsonable(task))
    out["tags"] = tags
    return out


def snake_image(image):
    if not image:
        return {}
    image = dict(image)
    tags = boto3_tag_list_to_ansible_dict(image.pop("Tags", []) or [])
    out = camel_dict_to_snake_dict(_jsonable(image))
    out["tags"] = tags
    return out


def image_snapshot_ids(image):
    return [
        m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings") or [] if (m.get("Ebs") or {}).get("SnapshotId")
    ]


class ImportModule(object):
    """Find the task by name -> decide (report / resume / start) -> (check mode: predict) -> wait -> finish."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.name = module.params["name"]
        self.started = time.monotonic()
        retry = AWSRetry.jittered_backoff(retries=12, delay=1, max_delay=20)
        self.ec2 = module.client("ec2", retry_decorator=retry)
        self._s3 = None
        self.retry = retry
        self.changed = False
        self.progress = ProgressFile(self.progress_path())
        user_tags = dict((str(k), str(v)) for k, v in (self.params.get("tags") or {}).items())
        # The AMI and snapshots: Name is the import's name unless tags set one.
        self.wanted_tags = dict({"Name": self.name}, **user_tags)
        # The task: Name is always the import's name, it is how later runs find the task.
        self.task_tags = dict(user_tags, Name=self.name)
        self.before = {}
        self.retries = {}

    @property
    def s3(self):
        if self._s3 is None:
            self._s3 = self.module.client("s3", retry_decorator=self.retry)
        return self._s3

    def progress_path(self):
        path = self.params.get("progress_file")
        if path == "":
            return None
        if path:
            return path
        return default_progress_path(self.module._remote_tmp, self.name)

    def elapsed(self):
        return round(time.monotonic() - self.started, 1)

    def fail(self, msg, exception=None, **extra):
        result = dict(extra)
        result.setdefault("progress_file", self.progress.path or "")
        result.setdefault("elapsed", self.elapsed())
        if exception is not None:
            self.module.fail_json_aws(exception, msg=msg, **result)
        self.module.fail_json(msg=msg, **result)

    def aws(self, what, func, **kwargs):
        """Call a boto3 method with throttling retries; any AWS error fails the module saying what was tried."""
        try:
            return func(aws_retry=True, **kwargs)
        except _aws_errors() as e:
            self.fail("Could not %s" % what, exception=e)

    # request ------------------------------------------------------------------------------------
    def sources(self):
        """[(bucket, key, format, extra)] from s3_url, s3_bucket/s3_key or disk_containers."""
        p = self.params
        out = []
        try:
            if p.get("disk_containers"):
                for index, dc in enumerate(p["disk_containers"]):
                    what = "disk_containers[%d]" % index
                    bucket, key = self._one_source(dc.get("s3_url"), dc.get("s3_bucket"), dc.get("s3_key"), what)
                    fmt = dc.get("format") or infer_format(key, what=what)
                    extra = {}
                    if dc.get("device_name"):
                        extra["DeviceName"] = dc["device_name"]
                    if dc.get("description"):
                        extra["Description"] = dc["description"]
                    out.append((bucket, key, fmt, extra))
                if len(out) > 1 and any(fmt == "ova" for _b, _k, fmt, _e in out):
                    raise VMImportError(
                        "disk_containers: an OVA must be the only disk container; import each OVA separately"
                    )
            else:
                bucket, key = self._one_source(p.get("s3_url"), p.get("s3_bucket"), p.get("s3_key"), "source")
                out.append((bucket, key, p.get("format") or infer_format(key, what="s3_url"), {}))
        except VMImportError as e:
            self.fail(str(e))
        return out

    @staticmethod
    def _one_source(url, bucket, key, what):
        if url and (bucket or key):
            raise VMImportError("%s: give either s3_url or s3_bucket + s3_key, not both" % what)
        if url:
            return parse_s3_url(url, what="%s s3_url" % what)
        if not bucket or not key:
            raise VMImportError("%s: give s3_url (s3://bucket/key) or both s3_bucket and s3_key" % what)
        validate_bucket_name(bucket, what="%s s3_bucket" % what)
        if key.endswith("/"):
            raise VMImportError("%s s3_key %r ends with '/', which names a folder, not an object" % (what, key))
        return bucket, key

    def request(self, sources):
        p = self.params
        containers = []
        for bucket, key, fmt, extra in sources:
            item = {"Format": fmt.upper(), "UserBucket": {"S3Bucket": bucket, "S3Key": key}}
            item.update(extra)
            containers.append(item)
        req = {"DiskContainers": containers}
        simple = (
            ("Description", "description"),
            ("Architecture", "architecture"),
            ("BootMode", "boot_mode"),
            ("Platform", "platform"),
            ("LicenseType", "license_type"),
            ("UsageOperation", "usage_operation"),
            ("RoleName", "role_name"),
        )
        for api, opt in simple:
            if p.get(opt):
                req[api] = p[opt]
        if p["encrypted"]:
            req["Encrypted"] = True
            if p.get("kms_key_id"):
                req["KmsKeyId"] = p["kms_key_id"]
        if p.get("license_specifications"):
            req["LicenseSpecifications"] = [
                {"LicenseConfigurationArn": ls["license_configuration_arn"]} for ls in p["license_specifications"]
            ]
        req["TagSpecifications"] = [
            {"ResourceType": "import-image-task", "Tags": ansible_dict_to_boto3_tag_list(self.task_tags)}
        ]
        return req

    # reading --------------------------------------------------------------------------------------
    def tasks_by_name(self):
        """Every task tagged Name=<name> (exact match), in the order the service lists them."""
        tasks = []
        kwargs = {"Filters": [{"Name": "tag:Name", "Values": [self.name]}]}
        while True:
            try:
                page = self.ec2.describe_import_image_tasks(aws_retry=True, **kwargs)
            except is_boto3_error_code(["InvalidFilter", "InvalidParameterValue"]):
                # The API reference documents only the task-state filter: where tag filters are refused,
                # list every task (the Name tag is checked below anyway).
                if "Filters" not in kwargs:
                    raise
                tasks, kwargs = [], {}
                continue
            except _aws_errors() as e:  # pylint: disable=duplicate-except
                self.fail("Could not list import tasks named %s" % self.name, exception=e)
            tasks.extend(t for t in page.get("ImportImageTasks", []) if task_tags(t).get("Name") == self.name)
            if not page.get("NextToken"):
                return tasks
            kwargs["NextToken"] = page["NextToken"]

    def describe_task(self, task_id):
        page = self.aws(
            "describe import task %s" % task_id, self.ec2.describe_import_image_tasks, ImportTaskIds=[task_id]
        )
        tasks = page.get("ImportImageTasks") or []
        if not tasks:
            self.fail("Import task %s is no longer listed by the service" % task_id, import_task_id=task_id)
        return tasks[0]

    def get_image(self, image_id):
        if not image_id:
            return None
        try:
            images = self.ec2.describe_images(ImageIds=[image_id], aws_retry=True).get("Images") or []
        except is_boto3_error_code(["InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"]):
            return None
        except _aws_errors() as e:  # pylint: disable=duplicate-except
            self.fail("Could not describe AMI %s" % image_id, exception=e)
        images = [i for i in images if i.get("State") not in ("deregistered",)]
        return images[0] if images else None

    def image_by_name(self, ami_name):
        page = self.aws(
            "look up AMI %s" % ami_name,
            self.ec2.describe_images,
            Owners=["self"],
            Filters=[{"Name": "name", "Values": [ami_name]}],
        )
        images = [i for i in page.get("Images") or [] if i.get("Name") == ami_name and i.get("State") != "deregistered"]
        return images[0] if images else None

    def final_image(self, task):
        """The AMI this completed task ends in: (image, needs_copy). (None, False) when it is gone."""
        intermediate = self.get_image(task.get("ImageId"))
        ami_name = self.params.get("ami_name")
        if ami_name:
            named = self.image_by_name(ami_name)
            if named is not None:
                owner_tag = boto3_tag_list_to_ansible_dict(named.get("Tags") or []).get("Name")
                if named["ImageId"] != task.get("ImageId") and owner_tag not in (None, self.name):
                    self.fail(
                        "An AMI named %s already exists (%s, tagged Name=%s) and was not made by the import %s: choose "
                        "another ami_name or deregister that AMI" % (ami_name, named["ImageId"], owner_tag, self.name),
                        import_task_id=task.get("ImportTaskId"),
                    )
                return named, False
            if intermediate is not None:
                return intermediate, intermediate.get("Name") != ami_name
            return None, False
        return intermediate, False

    # decisions ----------------------------------------------------------------------------------
    def first_progress(self, phase):
        """Write the progress file once before anything else: an unwritable path fails before any change."""
        try:
            self.progress.write(phase=phase, name=self.name, status=None, status_message=None)
        except VMImportError as e:
            self.fail(str(e))

    def present(self):
        sources = self.sources()
        req = self.request(sources)
        source_urls = ["s3://%s/%s" % (b, k) for b, k, _f, _e in sources]
        self.first_progress("checking")
        tasks = self.tasks_by_name()
        active = [t for t in tasks if classify(t) == RUNNING]
        done = [t for t in tasks if classify(t) == SUCCEEDED]
        unusable = [t for t in tasks if classify(t) == FAILED]

        # A completed task whose AMI still exists: report it (finishing whatever is left).
        for task in reversed(done):
            image, needs_copy = self.final_image(task)
            if image is not None:
                self.before = self.state(task, image)
                return self.finish(task, image, needs_copy, sources, source_urls, resumed=False)
            unusable.append(task)

        if active:
            task = active[-1]
            if len(active) > 1:
                self.module.warn(
                    "%d active import tasks are named %s (%s); waiting on %s"
                    % (len(active), self.name, ", ".join(t["ImportTaskId"] for t in active), task["ImportTaskId"])
                )
            self.before = self.state(task, None)
            return self.run_task(task, sources, source_urls, resumed=True)

        self.before = self.state(None, None)
        self.check_buckets(sources)
        if self.module.check_mode:
            self.changed = True
            return self.exit(
                dict(
                    import_task_id="",
                    status="absent",
                    status_message="would start an import of %s" % ", ".join(source_urls),
                    progress=None,
                    resumed=False,
                    tags=self.wanted_tags,
                    sources=source_urls,
                ),
                after=dict(status="active", sources=source_urls, tags=self.wanted_tags),
            )
        req["ClientToken"] = client_token(
            self.name, dict((k, v) for k, v in req.items() if k != "ClientToken"), len(unusable)
        )
        self.wait_for_slot()
        task = self.start_import(req)
        self.changed = True
        return self.run_task(task, sources, source_urls, resumed=False)

    def check_buckets(self, sources):
        """Before a new import (check mode too): every bucket exists and is in the import's region.

        VM Import reads only buckets of its own region and otherwise fails minutes later with "The given S3 bucket
        is not local to the region"; without s3:GetBucketLocation the check is skipped with a warning.
        """
        region = self.module.region
        for bucket in sorted(set(b for b, _k, _f, _e in sources)):
            try:
                found = self.s3.get_bucket_location(Bucket=bucket, aws_retry=True).get("LocationConstraint")
            except is_boto3_error_code(["NoSuchBucket", "404", "NotFound"]):
                self.fail(
                    "S3 bucket %s (from %s) does not exist: fix the bucket name, or create the bucket in %s and upload "
                    "the image" % (bucket, self.source_option(), region)
                )
            except is_boto3_error_code(["AccessDenied", "403", "AllAccessDisabled"]):  # pylint: disable=duplicate-except
                self.module.warn(
                    "Could not read the region of S3 bucket %s (s3:GetBucketLocation denied); VM Import fails if it is "
                    "not in %s" % (bucket, region)
                )
                continue
            except _aws_errors() as e:  # pylint: disable=duplicate-except
                self.fail("Could not read the region of S3 bucket %s" % bucket, exception=e)
            found = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(found, found)
            if region and found != region:
                self.fail(
                    "S3 bucket %s (from %s) is in region %s but the import runs in %s, and VM Import reads only "
                    "buckets of its own region: run the import in %s (the region option or AWS_REGION), or copy the "
                    "image to a bucket in %s" % (bucket, self.source_option(), found, region, found, region)
                )

    def source_option(self):
        p = self.params
        if p.get("disk_containers"):
            return "disk_containers"
        return "s3_url" if p.get("s3_url") else "s3_bucket"

    def active_task_count(self):
        count, kwargs = 0, {}
        while True:
            page = self.aws("list the import tasks", self.ec2.describe_import_image_tasks, **kwargs)
            count += sum(1 for t in page.get("ImportImageTasks") or [] if classify(t) == RUNNING)
            if not page.get("NextToken"):
                return count
            kwargs["NextToken"] = page["NextToken"]

    def wait_for_slot(self):
        """Honour max_active_imports: wait (bounded by limit_wait_timeout) for fewer active import tasks."""
        limit = self.params["max_active_imports"]
        if not limit:
            return
        # Forks that start together should not all look at the same instant.
        time.sleep(random.uniform(0, min(2.0, float(self.params["poll_interval"]))))  # noqa: S311 - jitter only
        deadline = time.monotonic() + self.params["limit_wait_timeout"]
        while True:
            active = self.active_task_count()
            if active < limit:
                return
            if time.monotonic() >= deadline:
                self.fail(
                    "%d import tasks are active, max_active_imports=%d, and none ended within limit_wait_timeout=%ss: "
                    "wait for other imports to end, raise max_active_imports, or lengthen limit_wait_timeout"
                    % (active, limit, self.params["limit_wait_timeout"])
                )
            self.progress.write(
                phase="waiting for an import slot",
                name=self.name,
                status="queued",
                status_message="%d import tasks active, max_active_imports=%d" % (active, limit),
            )
            time.sleep(max(1.0, float(self.params["poll_interval"])))

    def start_import(self, req):
        limit_rule = RetryRule(
            "import slot", delay=5.0, max_delay=60.0, budget=float(self.params["limit_wait_timeout"])
        )
        role_rule = RetryRule("role propagation", delay=2.0, max_delay=15.0, budget=ROLE_PROPAGATION_BUDGET)

        def rule_for(exc):
            code, message = error_code_and_message(exc)
            if code == "ResourceCountLimitExceeded":
                return limit_rule
            if is_role_propagation_error(code, message):
                return role_rule
            return None

        def on_retry(rule, exc, pause):
            self.retries[rule.name] = self.retries.get(rule.name, 0) + 1
            _code, message = error_code_and_message(exc)
            self.progress.write(
                phase="waiting for %s" % rule.name, name=self.name, status="starting", status_message=message
            )

        def call():
            return self.ec2.import_image(aws_retry=True, **req)

        self.progress.write(phase="starting", name=self.name, status="starting", status_message="ImportImage")
        try:
            response = call_with_retries(call, rule_for, on_retry=on_retry)
        except _aws_errors() as e:
            code, message = error_code_and_message(e)
            hint = hint_for(message)
            extra = {"hint": hint} if hint else {}
            if code == "ResourceCountLimitExceeded":
                msg = (
                    "ImportImage refused: the account is at its quota of active import tasks and no slot freed within "
                    "limit_wait_timeout=%ss; wait for other imports to end or raise the quota"
                    % self.params["limit_wait_timeout"]
                )
            elif is_role_propagation_error(code, message):
                msg = "ImportImage refused the service role for %ss: %s Hint: %s" % (
                    int(ROLE_PROPAGATION_BUDGET),
                    message,
                    hint,
                )
            else:
                msg = "ImportImage failed" + (": Hint: %s" % hint if hint else "")
            self.progress.write(phase="failed", name=self.name, status="failed", status_message=message)
            self.fail(msg, exception=e, **extra)
        task_id = response["ImportTaskId"]
        # ImportImage returns the task's fields; describe it for the complete picture (tags included).
        return self.describe_task(task_id)

    def run_task(self, task, sources, source_urls, resumed):
        p = self.params
        self.progress.task(task, "importing", name=self.name)
        if self.module.check_mode or not p["wait"]:
            if self.module.check_mode:
                self.changed = True  # waiting would tag the AMI and snapshots
            return self.exit(
                self.result(task, None, sources, source_urls, resumed=resumed),
                after=dict(status=task.get("Status"), import_task_id=task.get("ImportTaskId"), tags=self.wanted_tags),
            )
        try:
            task = wait_for_task(
                self.describe_task,
                task["ImportTaskId"],
                timeout=max(0, p["wait_timeout"] - self.elapsed()),
                poll_interval=p["poll_interval"],
                progress=self.progress,
                name=self.name,
            )
        except ImportTaskFailed as e:
            t = e.task
            extra = {"hint": e.hint} if e.hint else {}
            self.fail(
                str(e),
                import_task_id=t.get("ImportTaskId"),
                status=t.get("Status"),
                status_message=t.get("StatusMessage"),
                task=snake_task(t),
                resumed=resumed,
                **extra,
            )
        except ImportTaskTimeout as e:
            t = e.task
            self.progress.task(t, "timeout", name=self.name)
            self.fail(
                str(e),
                import_task_id=t.get("ImportTaskId"),
                status=t.get("Status"),
                status_message=t.get("StatusMessage"),
                progress=task_progress(t),
                task=snake_task(t),
                resumed=resumed,
            )
        self.changed = True
        image = self.get_image(task.get("ImageId"))
        if image is None:
            self.fail(
                "Import task %s completed but its AMI %s cannot be found" % (task["ImportTaskId"], task.get("ImageId")),
                import_task_id=task["ImportTaskId"],
                task=snake_task(task),
            )
        needs_copy = bool(p.get("ami_name")) and image.get("Name") != p["ami_name"]
        return self.finish(task, image, needs_copy, sources, source_urls, resumed=resumed)

    # finishing --------------------------------------------------------------------------------------
    def finish(self, task, image, needs_copy, sources, source_urls, resumed):
        """Name (copy), tag, IMDSv2 and source cleanup: each step only when needed, so re-runs change nothing."""
        check = self.module.check_mode
        p = self.params
        if needs_copy:
            self.changed = True
            if not check:
                self.progress.task(task, "naming the AMI", name=self.name, extra={"ami_name": p["ami_name"]})
                image = self.copy_image(task, image)
        elif p.get("ami_name"):
            # A copy exists; remove the intermediate image if an earlier run stopped before doing so.
            intermediate = self.get_image(task.get("ImageId"))
            if intermediate is not None and intermediate["ImageId"] != image["ImageId"]:
                self.changed = True
                if not check:
                    self.remove_image(intermediate)
        snapshots = image_snapshot_ids(image)
        if not needs_copy and image["ImageId"] == task.get("ImageId"):
            snapshots += [s for s in task_snapshot_ids(task) if s not in snapshots]
        if not (needs_copy and check):
            self.progress.task(task, "tagging", name=self.name)
            if self.ensure_tags([image["ImageId"]] + snapshots):
                self.changed = True
        else:
            self.changed = True
        if p.get("imds_support") and image.get("ImdsSupport") != p["imds_support"]:
            self.changed = True
            if not check:
                self.aws(
                    "require IMDSv2 on AMI %s" % image["ImageId"],
                    self.ec2.modify_image_attribute,
                    ImageId=image["ImageId"],
                    ImdsSupport={"Value": p["imds_support"]},
                )
        deleted = []
        if p["delete_source"]:
            for bucket, key, _f, _e in sources:
                if self.object_exists(bucket, key):
                    self.changed = True
                    deleted.append("s3://%s/%s" % (bucket, key))
                    if not check:
                        self.aws("delete s3://%s/%s" % (bucket, key), self.s3.delete_object, Bucket=bucket, Key=key)
        if not check:
            image = self.get_image(image["ImageId"]) or image
        result = self.result(task, image, sources, source_urls, resumed=resumed)
        if p["delete_source"]:
            result["source_deleted"] = deleted
        self.progress.task(task, "done", name=self.name, extra={"image_id": image["ImageId"]})
        return self.exit(result, after=self.state(task, image, assume_tags=True))

    def copy_image(self, task, intermediate):
        p = self.params
        kwargs = dict(
            SourceImageId=intermediate["ImageId"],
            SourceRegion=self.module.region,
            Name=p["ami_name"],
            ClientToken=client_token(self.name, {"copy": intermediate["ImageId"], "name": p["ami_name"]}),
        )
        description = p.get("description") or intermediate.get("Description")
        if description:
            kwargs["Description"] = description
        ebs = [m["Ebs"] for m in intermediate.get("BlockDeviceMappings") or [] if m.get("Ebs")]
        if any(e.get("Encrypted") for e in ebs) or p["encrypted"]:
            kwargs["Encrypted"] = True
            key = p.get("kms_key_id") or next((e.get("KmsKeyId") for e in ebs if e.get("KmsKeyId")), None)
            if key:
                kwargs["KmsKeyId"] = key
        new_id = self.aws(
            "copy AMI %s as %s" % (intermediate["ImageId"], p["ami_name"]), self.ec2.copy_image, **kwargs
        )["ImageId"]
        image = self.wait_image_available(new_id)
        self.remove_image(intermediate)
        return image

    def wait_image_available(self, image_id):
        deadline = time.monotonic() + max(60.0, self.params["wait_timeout"] - self.elapsed())
        while True:
            image = self.get_image(image_id)
            state = (image or {}).get("State")
            if state == "available":
                return image
            if state in ("failed", "error", "invalid"):
                self.fail(
                    "The copy %s of the imported AMI ended in state %s: %s"
                    % (image_id, state, (image.get("StateReason") or {}).get("Message", ""))
                )
            if time.monotonic() > deadline:
                self.fail(
                    "The copy %s of the imported AMI is still %s after wait_timeout; run the task again to finish"
                    % (image_id, state)
                )
            time.sleep(min(self.params["poll_interval"], 15))

    def remove_image(self, image):
        self.aws(
            "deregister intermediate AMI %s" % image["ImageId"], self.ec2.deregister_image, ImageId=image["ImageId"]
        )
        for snapshot_id in image_snapshot_ids(image):
            try:
                self.ec2.delete_snapshot(SnapshotId=snapshot_id, aws_retry=True)
            except is_boto3_error_code("InvalidSnapshot.NotFound"):
                pass
            except _aws_errors() as e:  # pylint: disable=duplicate-except
                self.fail(
                    "Deregistered the intermediate AMI %s but could not delete its snapshot %s; delete it by hand"
                    % (image["ImageId"], snapshot_id),
                    exception=e,
                )

    def ensure_tags(self, resource_ids):
        """Add or update the wanted tags on every resource; True when anything was (or would be) written."""
        current = {}
        kwargs = {"Filters": [{"Name": "resource-id", "Values": resource_ids}]}
        while True:
            page = self.aws("read tags", self.ec2.describe_tags, **kwargs)
            for tag in page.get("Tags", []):
                current.setdefault(tag["ResourceId"], {})[tag["Key"]] = tag["Value"]
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
        missing = [r for r in resource_ids if any(current.get(r, {}).get(k) != v for k, v in self.wanted_tags.items())]
        if missing and not self.module.check_mode:
            self.aws(
                "tag %s" % ", ".join(missing),
                self.ec2.create_tags,
                Resources=missing,
                Tags=ansible_dict_to_boto3_tag_list(self.wanted_tags),
            )
        return bool(missing)

    def object_exists(self, bucket, key):
        try:
            self.s3.head_object(Bucket=bucket, Key=key, aws_retry=True)
            return True
        except is_boto3_error_code(["404", "NoSuchKey", "NotFound"]):
            return False
        except _aws_errors() as e:  # pylint: disable=duplicate-except
            self.fail("Could not check s3://%s/%s" % (bucket, key), exception=e)

    # state: absent ----------------------------------------------------------------------------------
    def absent(self):
        self.first_progress("checking")
        tasks = self.tasks_by_name()
        active = [t for t in tasks if classify(t) == RUNNING]
        if not active:
            last = tasks[-1] if tasks else None
            self.before = self.state(last, None)
            return self.exit(
                dict(
                    import_task_id=(last or {}).get("ImportTaskId", ""),
                    status=(last or {}).get("Status", "absent"),
                    status_message=(last or {}).get("StatusMessage", "no active import task named %s" % self.name),
                    progress=task_progress(last or {}),
                    task=snake_task(last),
                ),
                after=self.state(last, None),
            )
        self.changed = True
        self.before = self.state(active[-1], None)
        for task in active:
            if not self.module.check_mode:
                kwargs = dict(ImportTaskId=task["ImportTaskId"])
                if self.params.get("cancel_reason"):
                    kwargs["CancelReason"] = self.params["cancel_reason"]
                try:
                    self.ec2.cancel_import_task(aws_retry=True, **kwargs)
                except is_boto3_error_code("IncorrectState"):
                    pass  # ended meanwhile
                except _aws_errors() as e:  # pylint: disable=duplicate-except
                    self.fail("Could not cancel import task %s" % task["ImportTaskId"], exception=e)
        task = active[-1] if self.module.check_mode else self.describe_task(active[-1]["ImportTaskId"])
        self.progress.task(task, "cancelled", name=self.name)
        return self.exit(
            dict(
                import_task_id=task["ImportTaskId"],
                cancelled=[t["ImportTaskId"] for t in active],
                status=task.get("Status") if not self.module.check_mode else "deleting",
                status_message=task.get("StatusMessage"),
                progress=task_progress(task),
                task=snake_task(task),
            ),
            after=dict(self.state(task, None), status="deleting"),
        )

    # output -----------------------------------------------------------------------------------------
    def state(self, task, image, assume_tags=False):
        if not task:
            return {"status": "absent"}
        out = {"import_task_id": task.get("ImportTaskId"), "status": task.get("Status")}
        if image:
            tags = boto3_tag_list_to_ansible_dict(image.get("Tags") or [])
            if assume_tags:
                tags.update(self.wanted_tags)
            out.update(image_id=image.get("ImageId"), ami_name=image.get("Name"), image_tags=tags)
        return out

    def result(self, task, image, sources, source_urls, resumed):
        out = dict(
            import_task_id=task.get("ImportTaskId"),
            status=task.get("Status"),
            status_message=task.get("StatusMessage") or "",
            progress=task_progress(task),
            task=snake_task(task),
            resumed=resumed,
            tags=self.wanted_tags,
            sources=source_urls,
        )
        if image:
            snapshots = image_snapshot_ids(image)
            if image.get("ImageId") == task.get("ImageId"):
                snapshots += [s for s in task_snapshot_ids(task) if s not in snapshots]
            out.update(
                image_id=image["ImageId"], snapshot_ids=snapshots, image=snake_image(image), ami_name=image.get("Name")
            )
        return out

    def exit(self, result, after=None):
        result["changed"] = self.changed
        if self.params["state"] == "present":
            result["import_retries"] = self.retries
        result.setdefault("elapsed", self.elapsed())
        result.setdefault("progress_file", self.progress.path or "")
        if self.progress.error:
            self.module.warn(self.progress.error)
        if self.module._diff:
            result["diff"] = dict(before=self.before, after=after if after is not None else self.before)
        self.module.exit_json(**result)


def main():
    container_spec = dict(
        s3_url=dict(type="str"),
        s3_bucket=dict(type="str"),
        s3_key=dict(type="str", no_log=False),
        format=dict(type="str", choices=["ova", "vmdk", "vhd", "vhdx", "raw"]),
        device_name=dict(type="str"),
        description=dict(type="str"),
    )
    argument_spec = dict(
        name=dict(type="str", required=True),
        s3_url=dict(type="str"),
        s3_bucket=dict(type="str"),
        s3_key=dict(type="str", no_log=False),
        format=dict(type="str", choices=["ova", "vmdk", "vhd", "vhdx", "raw"]),
        disk_containers=dict(type="list", elements="dict", options=container_spec),
        description=dict(type="str"),
        architecture=dict(type="str", choices=["x86_64", "arm64", "i386"]),
        boot_mode=dict(type="str", choices=["legacy-bios", "uefi"]),
        platform=dict(type="str", choices=["Linux", "Windows"]),
        license_type=dict(type="str", choices=["AWS", "BYOL"]),
        usage_operation=dict(type="str"),
        license_specifications=dict(
            type="list", elements="dict", options=dict(license_configuration_arn=dict(type="str", required=True))
        ),
        encrypted=dict(type="bool", default=False),
        kms_key_id=dict(type="str", no_log=False),
        role_name=dict(type="str"),
        tags=dict(type="dict", default={}, aliases=["resource_tags"]),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=7200),
        poll_interval=dict(type="float", default=15),
        limit_wait_timeout=dict(type="int", default=900),
        max_active_imports=dict(type="int", default=0),
        progress_file=dict(type="path"),
        delete_source=dict(type="bool", default=False),
        ami_name=dict(type="str"),
        imds_support=dict(type="str", choices=["v2.0"]),
        cancel_reason=dict(type="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    )
    module = AnsibleAWSModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[
            ("license_type", "usage_operation"),
            ("s3_url", "s3_bucket"),
            ("s3_url", "s3_key"),
            ("s3_url", "disk_containers"),
            ("s3_bucket", "disk_containers"),
            ("s3_key", "disk_containers"),
        ],
        required_together=[("s3_bucket", "s3_key")],
        required_if=[("state", "present", ("s3_url", "s3_bucket", "disk_containers"), True)],
    )
    p = module.params
    if p["kms_key_id"] and not p["encrypted"]:
        module.fail_json(msg="kms_key_id is set but encrypted is false: set encrypted: true to use the key")
    if p["license_type"] == "AWS" and p["platform"] == "Linux":
        module.fail_json(msg="license_type AWS is not available for Linux images: use BYOL or leave it unset")
    if p["wait_timeout"] < 0 or p["limit_wait_timeout"] < 0:
        module.fail_json(msg="wait_timeout and limit_wait_timeout must be 0 or more seconds")
    if p["max_active_imports"] < 0:
        module.fail_json(msg="max_active_imports must be 0 (no cap of ours) or a positive number of tasks")
    if not p["name"].strip() or len(p["name"]) > 256:
        module.fail_json(
            msg="name must be 1-256 characters: it becomes the Name tag of the task, the AMI and snapshots"
        )
    tags = p["tags"] or {}
    reserved = sorted(k for k in tags if str(k).lower().startswith("aws:"))
    if reserved:
        module.fail_json(msg="tags: keys starting with aws: are reserved by AWS: %s" % ", ".join(reserved))
    tag_problem = tag_limits_problem(tags, p["name"])
    if tag_problem:
        module.fail_json(msg=tag_problem)
    if p["poll_interval"] <= 0:
        module.fail_json(msg="poll_interval must be more than 0 seconds")
    if p["ami_name"] is not None and not AMI_NAME_RE.fullmatch(p["ami_name"]):
        module.fail_json(
            msg="ami_name %r is not a valid AMI name: use 3-128 characters, only letters, digits, spaces and "
            "( ) [ ] . / - ' @ _" % p["ami_name"]
        )
    runner = ImportModule(module)
    if p["state"] == "present":
        runner.present()
    else:
        runner.absent()


if __name__ == "__main__":
    main()
