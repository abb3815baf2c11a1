"""VM Import (ImportImage) for moto 5.2 server: actions, checks, task lifecycle, faults.

Call :func:`install` once in the moto server process (``server.py`` does it). It adds
``import_image``, ``describe_import_image_tasks`` and ``cancel_import_task`` to
``moto.ec2.responses.EC2Response``; moto dispatches EC2 actions by method name and
serialises the returned ``ActionResult`` through botocore's model.

Task state lives on moto's EC2 backend object of the account/region, so moto's
``/moto-api/reset`` clears it. Task progress is computed from elapsed time whenever a
task is looked at; the AMI and its snapshots are registered in moto's EC2 backend the
first time a task is seen past its duration.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses import EC2Response

try:  # imported as tests.simulators.vmimport.vmimport_ext
    from . import ova_checks as checks
except ImportError:  # imported as a top-level module by server.py
    import ova_checks as checks  # type: ignore[no-redef]

# --------------------------------------------------------------------------- configuration

DEFAULT_CONFIG: dict[str, Any] = {
    # seconds from ImportImage to "completed"
    "task_duration": 6.0,
    # seconds a failed/cancelled task stays "deleting" before "deleted" (None: 10% of task_duration, >= 0.3 s)
    "deleting_duration": None,
    # ImportImage is refused with ResourceCountLimitExceeded when this many tasks are active (None: no limit)
    "max_active_tasks": 20,
    # the service sees a role only this many seconds after it was created (IAM propagation)
    "iam_propagation_delay": 0.0,
    # {"<Action>" or "*": {"next": N} | {"every": N}}: RequestLimitExceeded for EC2 actions
    "throttle": {},
    # {"<EC2 Action>": {"next": N, "code": "...", "message": "...", "status": 400}}: the next N calls fail so
    "errors": {},
}

ROLE_MESSAGE = (
    "The service role {role} does not exist or does not have sufficient permissions for the service to continue"
)
ACCESS_MESSAGE = "ClientError: Disk validation failed [We do not have access to the given resource. Reason {reason}]"
REGION_MESSAGE = "ClientError: The given S3 bucket is not local to the region"
CANCEL_MESSAGE = "User initiated task cancelation"

# (fraction of task_duration at which the stage starts, StatusMessage, Progress at stage start)
STAGES = [
    (0.0, "pending", 2),
    (0.1, "validating", 7),
    (0.2, "validated", 15),
    (0.3, "converting", 28),
    (0.5, "updating", 41),
    (0.65, "booting", 59),
    (0.8, "preparing ami", 76),
    (1.0, "completed", 100),
]
FAIL_AT = {checks.STAGE_VALIDATING: 0.2, checks.STAGE_CONVERTING: 0.5}

FORMATS = {"ova": "OVA", "vmdk": "VMDK", "raw": "RAW", "vhd": "VHD", "vhdx": "VHDX"}
EXTENSIONS = {".ova": "ova", ".vmdk": "vmdk", ".raw": "raw", ".img": "raw", ".vhd": "vhd", ".vhdx": "vhdx"}
ARCHITECTURES = ("i386", "x86_64", "arm64")
PLATFORMS = ("Windows", "Linux")
LICENSE_TYPES = ("AWS", "BYOL")
BOOT_MODES = ("legacy-bios", "uefi")
TASK_STATES = ("active", "completed", "deleting", "deleted")


INJECTED_MESSAGES = {
    "ResourceCountLimitExceeded": "You have reached the maximum number of active import image tasks in this Region.",
    "RequestLimitExceeded": "Request limit exceeded.",
    "InternalError": "An internal error has occurred.",
    "Unavailable": "The server is overloaded and can't handle the request.",
}


class ConfigError(ValueError):
    pass


class SimState:
    """Process-wide faults, counters and throttling state (shared with server.py)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.initial = copy.deepcopy(DEFAULT_CONFIG)
        self.config = copy.deepcopy(DEFAULT_CONFIG)
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self._throttle_seen: Counter[str] = Counter()

    # configuration -----------------------------------------------------------------
    @staticmethod
    def validate(updates: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(updates, dict):
            raise ConfigError("configuration must be a JSON object")
        clean: dict[str, Any] = {}
        for key, value in updates.items():
            if key not in DEFAULT_CONFIG:
                raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(DEFAULT_CONFIG))}")
            if key in ("task_duration", "iam_propagation_delay"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ConfigError(f"{key} must be a number >= 0, got {value!r}")
                value = float(value)
            elif key == "deleting_duration":
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                    raise ConfigError(f"{key} must be null or a number >= 0, got {value!r}")
                value = None if value is None else float(value)
            elif key == "max_active_tasks":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                    raise ConfigError(f"{key} must be null or an integer >= 0, got {value!r}")
            elif key == "throttle":
                if not isinstance(value, dict):
                    raise ConfigError('throttle must be an object like {"ImportImage": {"next": 2}}')
                checked = {}
                for action, rule in value.items():
                    if (
                        not isinstance(rule, dict)
                        or len(rule) != 1
                        or next(iter(rule)) not in ("next", "every")
                        or isinstance(next(iter(rule.values())), bool)
                        or not isinstance(next(iter(rule.values())), int)
                        or next(iter(rule.values())) < 0
                    ):
                        raise ConfigError(
                            f'throttle rule for {action!r} must be {{"next": N}} or {{"every": N}} '
                            f"with an integer N >= 0, got {rule!r}"
                        )
                    checked[str(action)] = dict(rule)
                value = checked
            elif key == "errors":
                value = SimState._validate_errors(value)
            clean[key] = value
        return clean

    @staticmethod
    def _validate_errors(value: Any) -> dict[str, Any]:
        example = '{"ImportImage": {"next": 2, "code": "ResourceCountLimitExceeded"}}'
        if not isinstance(value, dict):
            raise ConfigError(f"errors must be an object like {example}")
        checked = {}
        for action, rule in value.items():
            if not isinstance(rule, dict) or set(rule) - {"next", "code", "message", "status"}:
                raise ConfigError(f"errors rule for {action!r} takes next, code, message, status; got {rule!r}")
            count = rule.get("next")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ConfigError(f"errors rule for {action!r} needs next: an integer >= 0, got {count!r}")
            if not isinstance(rule.get("code"), str) or not rule["code"]:
                raise ConfigError(f"errors rule for {action!r} needs code: an AWS error code, e.g. {example}")
            status = rule.get("status", 400)
            if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
                raise ConfigError(f"errors rule for {action!r}: status must be an HTTP error status, got {status!r}")
            checked[str(action)] = {
                "next": count,
                "code": rule["code"],
                "message": str(rule.get("message") or INJECTED_MESSAGES.get(rule["code"], f"Injected {rule['code']}")),
                "status": status,
            }
        return checked

    def configure(self, updates: dict[str, Any]) -> dict[str, Any]:
        clean = self.validate(updates)
        with self.lock:
            self.config.update(clean)
            if "throttle" in clean:
                self._throttle_seen.clear()
            return copy.deepcopy(self.config)

    def set_initial(self, updates: dict[str, Any]) -> None:
        clean = self.validate(updates)
        with self.lock:
            self.initial.update(clean)
            self.config = copy.deepcopy(self.initial)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.config)

    def get(self, key: str) -> Any:
        with self.lock:
            return copy.deepcopy(self.config[key])

    def reset(self) -> None:
        with self.lock:
            self.config = copy.deepcopy(self.initial)
            self.reset_counters()

    # counters and throttling ------------------------------------------------------------
    def reset_counters(self) -> None:
        with self.lock:
            self.calls.clear()
            self.throttled.clear()
            self.injected.clear()

    def counters(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {"calls": dict(self.calls), "throttled": dict(self.throttled), "injected": dict(self.injected)}

    def record_call(self, service: str | None, action: str) -> dict[str, Any] | None:
        """Count one API call; return the fault to answer it with, if any.

        ``{"kind": "throttle"}`` or ``{"kind": "error", "code", "message", "status"}``. Rules are keyed
        like the counters (``DescribeImages``, ``iam:CreateRole``, ``s3:PUT``); ``"*"`` matches every
        EC2 action in ``throttle``. Injected errors apply to EC2 actions.
        """
        is_ec2 = service in (None, "ec2")
        key = action if is_ec2 else f"{service}:{action}"
        with self.lock:
            self.calls[key] += 1
            error = self.config["errors"].get(key) if is_ec2 else None
            if error is not None and error["next"] > 0:
                error["next"] -= 1
                self.injected[key] += 1
                return {"kind": "error", **{k: error[k] for k in ("code", "message", "status")}}
            rules = self.config["throttle"]
            rule_key = key if key in rules else ("*" if "*" in rules and is_ec2 else None)
            if rule_key is None:
                return None
            rule = rules[rule_key]
            throttle = False
            if "next" in rule:
                if rule["next"] > 0:
                    rule["next"] -= 1
                    throttle = True
            else:
                self._throttle_seen[rule_key] += 1
                every = rule["every"]
                throttle = every > 0 and self._throttle_seen[rule_key] % every == 0
            if throttle:
                self.throttled[key] += 1
                return {"kind": "throttle"}
            return None


STATE = SimState()

# --------------------------------------------------------------------------- IAM policy evaluation


def _wild(pattern: str, value: str, ignore_case: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL) is not None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _load_doc(doc: Any) -> dict[str, Any]:
    if isinstance(doc, dict):
        return doc
    text = str(doc)
    try:
        return json.loads(text)
    except ValueError:
        try:
            return json.loads(urllib.parse.unquote(text))
        except ValueError:
            return {}


def _statements(doc: Any) -> list[dict[str, Any]]:
    return [s for s in _as_list(_load_doc(doc).get("Statement")) if isinstance(s, dict)]


def _stmt_matches(stmt: dict[str, Any], action: str, resource: str) -> bool:
    if "Action" in stmt:
        if not any(_wild(str(a), action, True) for a in _as_list(stmt["Action"])):
            return False
    elif "NotAction" in stmt:
        if any(_wild(str(a), action, True) for a in _as_list(stmt["NotAction"])):
            return False
    else:
        return False
    if "Resource" in stmt:
        return any(_wild(str(r), resource, False) for r in _as_list(stmt["Resource"]))
    if "NotResource" in stmt:
        return not any(_wild(str(r), resource, False) for r in _as_list(stmt["NotResource"]))
    return False


def is_allowed(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    """Identity-policy evaluation: an explicit Deny wins, else any Allow (conditions are ignored)."""
    allowed = False
    for stmt in statements:
        if not _stmt_matches(stmt, action, resource):
            continue
        if str(stmt.get("Effect", "")).lower() == "deny":
            return False
        if str(stmt.get("Effect", "")).lower() == "allow":
            allowed = True
    return allowed


def _condition_ok(condition: Any, context: dict[str, str]) -> bool:
    if not isinstance(condition, dict):
        return False
    for operator, tests in condition.items():
        if not isinstance(tests, dict):
            return False
        op = operator.lower()
        if_exists = op.endswith("ifexists")
        if if_exists:
            op = op[: -len("ifexists")]
        for key, expected in tests.items():
            actual = context.get(key.lower())
            if actual is None:
                if if_exists:
                    continue
                return False
            values = [str(v) for v in _as_list(expected)]
            if op in ("stringequals", "arnequals"):
                ok = actual in values
            elif op == "stringequalsignorecase":
                ok = actual.lower() in [v.lower() for v in values]
            elif op in ("stringlike", "arnlike"):
                ok = any(_wild(v, actual, False) for v in values)
            elif op == "stringnotequals":
                ok = actual not in values
            else:
                return False
            if not ok:
                return False
    return True


def trust_ok(doc: Any, context: dict[str, str]) -> bool:
    """Does the trust policy let vmie.amazonaws.com assume the role with ExternalId vmimport?"""
    allowed = False
    for stmt in _statements(doc):
        principal = stmt.get("Principal")
        services = _as_list(principal.get("Service")) if isinstance(principal, dict) else []
        if "vmie.amazonaws.com" not in services:
            continue
        if not any(_wild(str(a), "sts:AssumeRole", True) for a in _as_list(stmt.get("Action"))):
            continue
        effect = str(stmt.get("Effect", "")).lower()
        condition = stmt.get("Condition")
        if effect == "deny" and (condition is None or _condition_ok(condition, context)):
            return False
        if effect != "allow" or condition is None:
            continue  # the simulator requires the documented sts:Externalid condition
        has_external_id = any(
            op.lower() == "stringequals" and any(k.lower() == "sts:externalid" for k in tests)
            for op, tests in condition.items()
            if isinstance(tests, dict)
        )
        if has_external_id and _condition_ok(condition, context):
            allowed = True
    return allowed


# --------------------------------------------------------------------------- the task model


@dataclass
class DiskSource:
    format: str  # lower-case
    bucket: str
    key: str
    description: str | None = None
    device_name: str | None = None
    url: str | None = None


@dataclass
class ImportTask:
    task_id: str
    account: str
    region: str
    created: float
    duration: float
    params: dict[str, Any]
    sources: list[DiskSource]
    tags: list[dict[str, str]] = field(default_factory=list)
    client_token: str | None = None
    fingerprint: str = ""
    containers: list[checks.ContainerInfo] = field(default_factory=list)
    failure: checks.ImportFailure | None = None
    cancelled_at: float | None = None
    cancel_reason: str | None = None
    image_id: str | None = None
    snapshot_ids: list[str] = field(default_factory=list)
    platform: str = "Linux"
    kms_key_id: str | None = None

    @property
    def disks(self) -> list[checks.DiskInfo]:
        return [d for c in self.containers for d in c.disks]


def _deleting_duration(task: ImportTask) -> float:
    configured = STATE.get("deleting_duration")
    return configured if configured is not None else max(0.3, 0.1 * task.duration)


def task_phase(task: ImportTask, now: float) -> tuple[str, str | None, int | None]:
    """(Status, StatusMessage, Progress) of a task at time ``now``."""
    if task.cancelled_at is not None:
        message = task.cancel_reason or CANCEL_MESSAGE
        status = "deleting" if now - task.cancelled_at < _deleting_duration(task) else "deleted"
        return status, message, None
    elapsed = now - task.created
    if task.failure is not None:
        fail_at = FAIL_AT.get(task.failure.stage, 0.2) * task.duration
        if elapsed >= fail_at:
            status = "deleting" if elapsed - fail_at < _deleting_duration(task) else "deleted"
            return status, task.failure.message, None
    if elapsed >= task.duration:
        return "completed", None, None
    fraction = elapsed / task.duration if task.duration > 0 else 1.0
    for (start, message, progress), (end, _m, next_progress) in zip(STAGES, STAGES[1:], strict=False):
        if start <= fraction < end:
            within = (fraction - start) / (end - start)
            return "active", message, int(progress + within * (next_progress - progress - 1))
    return "completed", None, None


def _stage_reached(task: ImportTask, now: float, stage: str) -> bool:
    start = next(s for s, m, _p in STAGES if m == stage)
    return now - task.created >= start * task.duration


def _tasks_of(backend: Any) -> dict[str, ImportTask]:
    store = backend.__dict__.get("_vmimport_tasks")
    if store is None:
        store = backend.__dict__.setdefault("_vmimport_tasks", {})
    return store


def _tokens_of(backend: Any) -> dict[str, str]:
    store = backend.__dict__.get("_vmimport_tokens")
    if store is None:
        store = backend.__dict__.setdefault("_vmimport_tokens", {})
    return store


TASK_LOCK = threading.RLock()

# --------------------------------------------------------------------------- reading S3 through moto


def _s3_backend(account: str, region: str) -> Any:
    from moto.s3.models import s3_backends
    from moto.utilities.utils import get_partition

    return s3_backends[account][get_partition(region)]


def _object_reader(fake_key: Any) -> checks.Read:
    """A thread-safe positional reader over a moto FakeKey's spooled buffer."""
    import io
    import os

    buffer = fake_key._value_buffer
    lock = threading.Lock()

    def read(offset: int, length: int) -> bytes:
        if length <= 0 or offset < 0:
            return b""
        inner = getattr(buffer, "_file", buffer)
        if isinstance(inner, io.BytesIO):
            return bytes(inner.getbuffer()[offset : offset + length])
        try:
            return os.pread(inner.fileno(), length, offset)
        except (AttributeError, OSError, io.UnsupportedOperation):
            with lock:
                position = buffer.tell()
                buffer.seek(offset)
                data = buffer.read(length)
                buffer.seek(position)
                return data

    return read


def _iam_backend(account: str, region: str) -> Any:
    from moto.iam.models import iam_backends
    from moto.utilities.utils import get_partition

    return iam_backends[account][get_partition(region)]


def _role_statements(role: Any) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for doc in role.policies.values():
        statements.extend(_statements(doc))
    for policy in role.managed_policies.values():
        versions = [v for v in getattr(policy, "versions", []) if getattr(v, "is_default", False)]
        doc = versions[0].document if versions else getattr(policy, "document", None)
        if doc is not None:
            statements.extend(_statements(doc))
    return statements


def _validate_sources(task: ImportTask, role: Any) -> None:
    """Run the validating-stage checks now; record the outcome on the task."""
    from moto.utilities.utils import get_partition

    partition = get_partition(task.region)
    statements = _role_statements(role)
    role_name = role.name
    s3 = _s3_backend(task.account, task.region)
    containers = []
    try:
        for src in task.sources:
            bucket_arn = f"arn:{partition}:s3:::{src.bucket}"
            if not (
                is_allowed(statements, "s3:GetBucketLocation", bucket_arn)
                and is_allowed(statements, "s3:ListBucket", bucket_arn)
            ):
                raise checks.ImportFailure(f"ClientError: {ROLE_MESSAGE.format(role=role_name)}")
            try:
                bucket = s3.get_bucket(src.bucket)
            except Exception as exc:  # moto's MissingBucket
                raise checks.ImportFailure(ACCESS_MESSAGE.format(reason="404 Not Found")) from exc
            if bucket.region_name != task.region:
                raise checks.ImportFailure(REGION_MESSAGE)
            if not is_allowed(statements, "s3:GetObject", f"{bucket_arn}/{src.key}"):
                raise checks.ImportFailure(ACCESS_MESSAGE.format(reason="403 Forbidden"))
            fake_key = bucket.keys.get(src.key) if hasattr(bucket, "keys") else None
            if fake_key is None:
                raise checks.ImportFailure(ACCESS_MESSAGE.format(reason="404 Not Found"))
            name = src.key.rsplit("/", 1)[-1]
            containers.append(checks.inspect_container(src.format, _object_reader(fake_key), fake_key.size, name))
        disks = [d for c in containers for d in c.disks]
        if len(disks) > checks.MAX_DISKS:
            raise checks.ImportFailure(checks.MSG_TOO_MANY_DISKS)
        task.containers = containers
        checks.check_guest(containers, task.params.get("Platform"))
        os_type = next((c.os_type for c in containers if c.os_type), "") or ""
        if task.params.get("Platform"):
            task.platform = task.params["Platform"]
        elif os_type.lower().startswith("win"):
            task.platform = "Windows"
    except checks.ImportFailure as failure:
        task.containers = containers
        task.failure = failure


# --------------------------------------------------------------------------- AMI registration


def _make_ami_class() -> type:
    from moto.ec2.models.amis import Ami

    class ImportedAmi(Ami):  # type: ignore[misc, valid-type]
        """An AMI whose block device mappings are the imported snapshots."""

        __module__ = "moto.ec2.models.vmimport"  # moto's model registry keys classes by moto.<service>

        def __init__(self, backend: Any, ami_id: str, mappings: list[dict[str, Any]], **kwargs: Any):
            super().__init__(backend, ami_id, **kwargs)
            auto = self.ebs_snapshot  # moto auto-creates one snapshot per AMI; drop it
            backend.snapshots.pop(auto.id, None)
            self.ebs_snapshot = backend.snapshots[mappings[0]["Ebs"]["SnapshotId"]]
            self._mappings = mappings

        @property
        def block_device_mappings(self) -> list[dict[str, Any]]:
            return self._mappings

    return ImportedAmi


_AMI_CLASS: type | None = None


def _device_name(index: int) -> str:
    return "/dev/sda1" if index == 0 else f"/dev/sd{chr(ord('a') + index)}"


def _device_names(task: ImportTask) -> list[str]:
    """One device name per disk: DeviceName of multi-container imports, else /dev/sda1, /dev/sdb, ..."""
    names = []
    for src, container in zip(task.sources, task.containers, strict=False):
        for _disk in container.disks:
            named = src.device_name if len(task.sources) > 1 else None
            names.append(named or _device_name(len(names)))
    return names


def _finish(task: ImportTask, backend: Any) -> None:
    """Register the snapshots and the AMI of a task that just completed."""
    global _AMI_CLASS
    from moto.ec2.utils import random_ami_id

    if _AMI_CLASS is None:
        _AMI_CLASS = _make_ami_class()
    encrypted = bool(task.params.get("Encrypted"))
    kms_key_id = task.params.get("KmsKeyId")
    zone = f"{task.region}a"
    ami_id = random_ami_id()
    mappings = []
    device_names = _device_names(task)
    for index, disk in enumerate(task.disks):
        size_gib = max(1, -(-disk.capacity // (1 << 30)))
        volume = backend.create_volume(size=size_gib, zone_name=zone, encrypted=encrypted, kms_key_id=kms_key_id)
        snapshot = backend.create_snapshot(volume.id, f"Created by AWS-VMImport service for {task.task_id}")
        snapshot.kms_key_id = volume.kms_key_id if encrypted else None
        task.kms_key_id = snapshot.kms_key_id
        snapshot.encrypted = encrypted
        snapshot.from_ami = ami_id
        backend.delete_volume(volume.id)
        task.snapshot_ids.append(snapshot.id)
        ebs: dict[str, Any] = {
            "SnapshotId": snapshot.id,
            "VolumeSize": size_gib,
            "DeleteOnTermination": True,
            "VolumeType": "gp2",
            "Encrypted": encrypted,
        }
        if encrypted and snapshot.kms_key_id:
            ebs["KmsKeyId"] = snapshot.kms_key_id
        mappings.append({"DeviceName": device_names[index], "Ebs": ebs})
    ami = _AMI_CLASS(
        backend,
        ami_id,
        mappings,
        name=task.task_id,
        description=task.params.get("Description") or f"AWS-VMImport service: {task.platform}",
        architecture=task.params.get("Architecture") or "x86_64",
        platform="windows" if task.platform == "Windows" else None,
        virtualization_type="hvm",
        hypervisor="xen",
        root_device_type="ebs",
        root_device_name="/dev/sda1",
        region_name=zone,
        boot_mode=task.params.get("BootMode") or "legacy-bios",
    )
    backend.amis[ami_id] = ami
    task.image_id = ami_id


def _copy_imported_image(
    backend: Any, source_backend: Any, source: Any, name: str | None, description: str | None
) -> Any:
    """CopyImage of an imported AMI: new snapshots for every mapping, attributes kept (moto copies one)."""
    from moto.core.utils import utcnow
    from moto.ec2.models.elastic_block_store import Snapshot
    from moto.ec2.utils import random_ami_id, random_snapshot_id

    ami_id = random_ami_id()
    stamp = utcnow().strftime("%a %b %d %H:%M:%S UTC %Y")
    mappings = []
    for mapping in source.block_device_mappings:
        old = source_backend.snapshots[mapping["Ebs"]["SnapshotId"]]
        snapshot = Snapshot(
            backend,
            random_snapshot_id(),
            volume=old.volume,
            description=(
                f"Copied for DestinationAmi {ami_id} from SourceAmi {source.id} for SourceSnapshot {old.id}. "
                f"Task created on {stamp}."
            ),
            encrypted=old.encrypted,
            kms_key_id=old.kms_key_id,
            from_ami=ami_id,
        )
        backend.snapshots[snapshot.id] = snapshot
        mappings.append({"DeviceName": mapping["DeviceName"], "Ebs": {**mapping["Ebs"], "SnapshotId": snapshot.id}})
    ami = _AMI_CLASS(
        backend,
        ami_id,
        mappings,
        name=name or source.name,
        description=description if description is not None else source.description,
        architecture=source.architecture,
        platform=source.platform,
        virtualization_type=source.virtualization_type,
        hypervisor=source.hypervisor,
        root_device_type=source.root_device_type,
        root_device_name=source.root_device_name,
        region_name=f"{backend.region_name}a",
        boot_mode=source.boot_mode,
    )
    backend.amis[ami_id] = ami
    return ami


def _install_copy_image() -> None:
    from moto.ec2.models.amis import AmiBackend

    original = getattr(AmiBackend.copy_image, "_vmimport_original", AmiBackend.copy_image)

    def copy_image(
        self: Any, source_image_id: str, source_region: str, name: str | None = None, description: str | None = None
    ) -> Any:
        from moto.ec2.models import ec2_backends

        source_backend = ec2_backends[self.account_id][source_region]
        source = source_backend.amis.get(source_image_id)
        if source is not None and _AMI_CLASS is not None and isinstance(source, _AMI_CLASS):
            return _copy_imported_image(self, source_backend, source, name, description)
        return original(self, source_image_id, source_region, name, description)

    copy_image._vmimport_original = original  # type: ignore[attr-defined]
    AmiBackend.copy_image = copy_image  # type: ignore[method-assign]


def _refresh(backend: Any, now: float) -> None:
    """Materialise the AMI of every task that has completed by ``now``."""
    with TASK_LOCK:
        for task in _tasks_of(backend).values():
            if task.image_id is None and task.failure is None and task.cancelled_at is None:
                if task_phase(task, now)[0] == "completed":
                    try:
                        _finish(task, backend)
                    except Exception as exc:  # noqa: BLE001 - a simulator bug must not wedge every Describe
                        import sys
                        import traceback

                        traceback.print_exc(file=sys.stderr)
                        task.failure = checks.ImportFailure(f"ServerError: simulator could not register the AMI: {exc}")


# --------------------------------------------------------------------------- serialisation


def describe_task(task: ImportTask, now: float) -> dict[str, Any]:
    status, message, progress = task_phase(task, now)
    params = task.params
    validated = _stage_reached(task, now, "validated") or status == "completed"
    out: dict[str, Any] = {"ImportTaskId": task.task_id, "Status": status}
    if message is not None:
        out["StatusMessage"] = message
    if progress is not None:
        out["Progress"] = str(progress)
    if params.get("Description"):
        out["Description"] = params["Description"]
    if params.get("Architecture") or validated:
        out["Architecture"] = params.get("Architecture") or "x86_64"
    if params.get("Platform") or validated:
        out["Platform"] = task.platform
    if params.get("UsageOperation"):
        out["UsageOperation"] = params["UsageOperation"]
    elif params.get("LicenseType") or validated:
        out["LicenseType"] = params.get("LicenseType") or "BYOL"
    if params.get("BootMode") or status == "completed":
        out["BootMode"] = params.get("BootMode") or "legacy-bios"
    if params.get("Encrypted"):
        out["Encrypted"] = True
        kms = params.get("KmsKeyId") or task.kms_key_id
        if kms:
            out["KmsKeyId"] = kms
    if params.get("LicenseSpecifications"):
        out["LicenseSpecifications"] = params["LicenseSpecifications"]
    if task.tags:
        out["Tags"] = [dict(t) for t in task.tags]
    if status == "completed" and task.image_id:
        out["ImageId"] = task.image_id
    out["SnapshotDetails"] = _snapshot_details(task, status, validated)
    return out


def _snapshot_details(task: ImportTask, status: str, validated: bool) -> list[dict[str, Any]]:
    details = []
    if validated and task.containers:
        index = 0
        device_names = _device_names(task)
        for src, container in zip(task.sources, task.containers, strict=False):
            for disk in container.disks:
                item: dict[str, Any] = {
                    "DiskImageSize": float(disk.file_size),
                    "Format": disk.format,
                    "UserBucket": {"S3Bucket": src.bucket, "S3Key": src.key},
                }
                if src.description:
                    item["Description"] = src.description
                if status in ("active", "completed") and task.failure is None:
                    item["DeviceName"] = device_names[index]
                if status == "completed" and index < len(task.snapshot_ids):
                    item["SnapshotId"] = task.snapshot_ids[index]
                item["Status"] = "active" if status == "active" else "completed"
                details.append(item)
                index += 1
        return details
    for src in task.sources:
        item = {
            "DiskImageSize": 0.0,
            "Format": FORMATS[src.format],
            "UserBucket": {"S3Bucket": src.bucket, "S3Key": src.key},
        }
        if src.url:
            item["Url"] = src.url
        if src.description:
            item["Description"] = src.description
        item["Status"] = "active" if status == "active" else "deleted"
        details.append(item)
    return details


# --------------------------------------------------------------------------- request parsing


def _invalid(message: str) -> EC2ClientError:
    return EC2ClientError("InvalidParameter", message)


def _parse_sources(containers: Any) -> list[DiskSource]:
    if not containers:
        raise EC2ClientError("MissingParameter", "The request must contain the parameter DiskContainer")
    if not isinstance(containers, list):
        containers = [containers]
    if len(containers) > checks.MAX_DISKS:
        raise _invalid(f"The number of disk containers ({len(containers)}) exceeds the maximum of {checks.MAX_DISKS}.")
    sources = []
    for number, container in enumerate(containers, start=1):
        where = f"DiskContainer.{number}"
        bucket_spec = container.get("UserBucket")
        url = container.get("Url")
        if bucket_spec and url:
            raise _invalid(f"{where}: specify either Url or UserBucket, not both.")
        if url:
            parsed = urllib.parse.urlparse(url)
            if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
                raise _invalid(f"{where}.Url {url!r} is not supported; use an s3://bucket/key URL or UserBucket.")
            bucket, key = parsed.netloc, urllib.parse.unquote(parsed.path.lstrip("/"))
        elif bucket_spec:
            bucket = bucket_spec.get("S3Bucket")
            key = bucket_spec.get("S3Key")
            if not bucket:
                raise _invalid(f"{where}.UserBucket.S3Bucket is missing or empty.")
            if not key:
                raise _invalid(f"{where}.UserBucket.S3Key is missing or empty.")
        else:
            raise _invalid(f"{where}: either Url or UserBucket must be specified.")
        fmt = container.get("Format")
        if fmt:
            fmt = str(fmt).lower()
            if fmt not in FORMATS:
                raise _invalid(
                    f"{where}.Format {container.get('Format')!r} is not supported. "
                    "Valid formats: OVA, VMDK, VHD, VHDX, RAW."
                )
        else:
            suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key else ""
            fmt = EXTENSIONS.get(suffix)
            if fmt is None:
                raise _invalid(f"{where}.Format is missing and cannot be inferred from the S3 key {key!r}.")
        sources.append(
            DiskSource(
                format=fmt,
                bucket=bucket,
                key=key,
                description=container.get("Description"),
                device_name=container.get("DeviceName"),
                url=url,
            )
        )
    if len(sources) > 1 and any(s.format == "ova" for s in sources):
        raise _invalid("An OVA disk container must be the only disk container of the import.")
    return sources


def _check_params(params: dict[str, Any]) -> None:
    arch = params.get("Architecture")
    if arch and arch not in ARCHITECTURES:
        raise _invalid(
            f"Value ({arch}) for parameter Architecture is invalid. Valid values: {', '.join(ARCHITECTURES)}."
        )
    platform = params.get("Platform")
    if platform and platform not in PLATFORMS:
        raise _invalid(f"Value ({platform}) for parameter Platform is invalid. Valid values: Windows, Linux.")
    license_type = params.get("LicenseType")
    if license_type and params.get("UsageOperation"):
        raise _invalid("LicenseType and UsageOperation cannot be specified together.")
    if license_type and license_type not in LICENSE_TYPES:
        raise _invalid(f"Value ({license_type}) for parameter LicenseType is invalid. Valid values: AWS, BYOL.")
    if license_type == "AWS" and platform == "Linux":
        raise _invalid("LicenseType AWS is not supported for Linux. Use BYOL.")
    if params.get("KmsKeyId") and not params.get("Encrypted"):
        raise _invalid("The parameter KmsKeyId requires the parameter Encrypted to be set to true.")
    boot_mode = params.get("BootMode")
    if boot_mode and boot_mode not in BOOT_MODES:
        raise _invalid(f"Value ({boot_mode}) for parameter BootMode is invalid. Valid values: legacy-bios, uefi.")


def _parse_tags(specs: Any) -> list[dict[str, str]]:
    tags: list[dict[str, str]] = []
    for spec in _as_list(specs):
        resource_type = spec.get("ResourceType")
        if resource_type != "import-image-task":
            raise _invalid(f"'{resource_type}' is not a valid taggable resource type for this operation.")
        for tag in spec.get("Tags") or []:
            tags.append({"Key": tag.get("Key", ""), "Value": tag.get("Value", "")})
    return tags


def _fingerprint(params: dict[str, Any]) -> str:
    stable = {k: v for k, v in params.items() if k not in ("ClientToken", "DryRun")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()


def _check_role(account: str, region: str, role_name: str) -> Any:
    from moto.utilities.utils import get_partition

    refused = _invalid(ROLE_MESSAGE.format(role=role_name))
    try:
        role = _iam_backend(account, region).get_role(role_name)
    except Exception as exc:  # moto's IAMNotFoundException
        raise refused from exc
    delay = STATE.get("iam_propagation_delay")
    if delay:
        created = role.create_date
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        if (datetime.now(timezone.utc) - created).total_seconds() < delay:
            raise refused
    partition = get_partition(region)
    context = {
        "sts:externalid": "vmimport",
        "aws:sourceaccount": account,
        "aws:sourcearn": f"arn:{partition}:vmie:{region}:{account}:import-task/pending",
    }
    if not trust_ok(role.assume_role_policy_document, context):
        raise refused
    return role


def _check_kms(account: str, region: str, key_id: str) -> None:
    if key_id == "alias/aws/ebs" or key_id.endswith(":alias/aws/ebs"):
        return  # the AWS managed EBS key always exists
    try:
        from moto.kms.models import kms_backends

        kms_backends[account][region].describe_key(key_id)
    except Exception as exc:
        raise _invalid(f"The KMS key {key_id} does not exist or is not accessible.") from exc


# --------------------------------------------------------------------------- the actions


def import_image(self: EC2Response) -> ActionResult:
    params = {
        name: self._get_param(name)
        for name in (
            "Architecture",
            "ClientData",
            "ClientToken",
            "Description",
            "DiskContainers",
            "Encrypted",
            "Hypervisor",
            "KmsKeyId",
            "LicenseType",
            "Platform",
            "RoleName",
            "LicenseSpecifications",
            "TagSpecifications",
            "UsageOperation",
            "BootMode",
        )
    }
    params = {k: v for k, v in params.items() if v is not None}
    backend = self.ec2_backend
    account, region = self.current_account, self.region
    now = time.time()
    with TASK_LOCK:
        _refresh(backend, now)
        token = params.get("ClientToken")
        fingerprint = _fingerprint(params)
        if token and token in _tokens_of(backend):
            task = _tasks_of(backend)[_tokens_of(backend)[token]]
            if task.fingerprint != fingerprint:
                raise EC2ClientError(
                    "IdempotentParameterMismatch",
                    f"The client token {token} was already used with different parameters.",
                )
            return ActionResult(describe_task(task, now))
        sources = _parse_sources(params.get("DiskContainers"))
        _check_params(params)
        tags = _parse_tags(params.get("TagSpecifications"))
        if params.get("KmsKeyId"):
            _check_kms(account, region, params["KmsKeyId"])
        role = _check_role(account, region, params.get("RoleName") or "vmimport")
        if self._get_param("DryRun"):
            raise EC2ClientError("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
        limit = STATE.get("max_active_tasks")
        if limit is not None:
            active = sum(1 for t in _tasks_of(backend).values() if task_phase(t, now)[0] == "active")
            if active >= limit:
                raise EC2ClientError(
                    "ResourceCountLimitExceeded",
                    INJECTED_MESSAGES["ResourceCountLimitExceeded"],
                )
        task = ImportTask(
            task_id="import-ami-" + secrets.token_hex(9)[:17],
            account=account,
            region=region,
            created=now,
            duration=STATE.get("task_duration"),
            params=params,
            sources=sources,
            tags=tags,
            client_token=token,
            fingerprint=fingerprint,
        )
        _validate_sources(task, role)
        _tasks_of(backend)[task.task_id] = task
        if token:
            _tokens_of(backend)[token] = task.task_id
        return ActionResult(describe_task(task, now))


def describe_import_image_tasks(self: EC2Response) -> ActionResult:
    backend = self.ec2_backend
    now = time.time()
    ids = self._get_param("ImportTaskIds") or []
    filters = self._filters_from_querystring()
    max_results = self._get_param("MaxResults")
    next_token = self._get_param("NextToken")
    with TASK_LOCK:
        _refresh(backend, now)
        tasks = _tasks_of(backend)
        for task_id in ids:
            if task_id not in tasks:
                raise EC2ClientError(
                    "InvalidConversionTaskId.Malformed"
                    if not re.fullmatch(r"import-ami-[0-9a-f]{8,17}", task_id)
                    else "InvalidConversionTaskId",
                    f"The import task ID '{task_id}' does not exist",
                )
        selected = [tasks[i] for i in ids] if ids else sorted(tasks.values(), key=lambda t: t.created)
        items = [describe_task(t, now) for t in selected]
    for name, values in filters.items():
        items = [item for item in items if _filter_match(item, name, values)]
    start = 0
    if next_token:
        try:
            start = int(next_token)
        except ValueError as exc:
            raise EC2ClientError("InvalidParameterValue", f"Invalid NextToken {next_token!r}") from exc
    result: dict[str, Any] = {}
    if max_results:
        page = items[start : start + int(max_results)]
        if start + int(max_results) < len(items):
            result["NextToken"] = str(start + int(max_results))
    else:
        page = items[start:]
    result["ImportImageTasks"] = page
    return ActionResult(result)


def _filter_match(item: dict[str, Any], name: str, values: list[str]) -> bool:
    tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
    if name == "task-state":
        return item["Status"] in values
    if name == "tag-key":
        return any(v in tags for v in values)
    if name.startswith("tag:"):
        key = name[4:]
        return key in tags and any(_wild(v, tags[key], False) for v in values)
    raise EC2ClientError("InvalidParameterValue", f"The filter '{name}' is invalid")


def cancel_import_task(self: EC2Response) -> ActionResult:
    backend = self.ec2_backend
    now = time.time()
    task_id = self._get_param("ImportTaskId")
    reason = self._get_param("CancelReason")
    if not task_id:
        raise EC2ClientError("MissingParameter", "The request must contain the parameter ImportTaskId")
    with TASK_LOCK:
        _refresh(backend, now)
        task = _tasks_of(backend).get(task_id)
        if task is None:
            raise EC2ClientError("InvalidConversionTaskId", f"The import task ID '{task_id}' does not exist")
        status = task_phase(task, now)[0]
        if status != "active":
            raise EC2ClientError(
                "IncorrectState",
                f"The import task {task_id} cannot be canceled because it is in the {status} state.",
            )
        if self._get_param("DryRun"):
            raise EC2ClientError("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
        task.cancelled_at = now
        task.cancel_reason = reason
        return ActionResult({"ImportTaskId": task_id, "PreviousState": "active", "State": "deleting"})


def _logged(func: Any) -> Any:
    """Print the traceback of an unexpected error (moto turns it into a bare 500)."""
    import functools
    import sys
    import traceback

    from moto.core.exceptions import ServiceException

    @functools.wraps(func)
    def wrapper(self: EC2Response) -> ActionResult:
        try:
            return func(self)
        except ServiceException:
            raise
        except Exception:
            traceback.print_exc(file=sys.stderr)
            raise

    return wrapper


def _install_imds_support() -> None:
    """ModifyImageAttribute ImdsSupport=v2.0 sticks and DescribeImages reports it, as on EC2 (moto drops it)."""
    stock = getattr(EC2Response.modify_image_attribute, "__wrapped_stock__", EC2Response.modify_image_attribute)

    def modify_image_attribute(self: EC2Response) -> Any:
        value = (self._get_param("ImdsSupport") or {}).get("Value")
        if value is not None:
            self.error_on_dryrun()
            if value != "v2.0":
                raise EC2ClientError(
                    "InvalidParameterValue", f"Value ({value}) for parameter imdsSupport is invalid. Expected: 'v2.0'."
                )
            (image,) = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])
            image.imds_support = value
        return stock(self)

    modify_image_attribute.__wrapped_stock__ = stock  # type: ignore[attr-defined]
    EC2Response.modify_image_attribute = modify_image_attribute  # type: ignore[method-assign]


def install() -> None:
    """Add the VM Import actions to moto's EC2 responses (idempotent)."""
    _install_imds_support()
    EC2Response.import_image = _logged(import_image)  # type: ignore[attr-defined]
    EC2Response.describe_import_image_tasks = _logged(describe_import_image_tasks)  # type: ignore[attr-defined]
    EC2Response.cancel_import_task = _logged(cancel_import_task)  # type: ignore[attr-defined]
    _install_copy_image()
