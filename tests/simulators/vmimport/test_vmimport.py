"""The VM Import simulator against boto3, over real sockets, with real OVAs (qemu-img VMDKs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.simulators.vmimport import ova_checks
from tests.simulators.vmimport.fixtures import TRUST_POLICY, create_vmimport_role, role_policy
from tests.simulators.vmimport.launcher import MotoVmImportError
from tests.simulators.vmimport.ova_builder import build_ova, make_raw_disk, make_vmdk

ROLE_MSG = "The service role {} does not exist or does not have sufficient permissions for the service to continue"
TERMINAL = ("completed", "deleted")
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """OVAs and disks built once per module."""
    d = tmp_path_factory.mktemp("images")
    out: dict[str, Path] = {}
    boot = make_raw_disk(d / "boot.raw", 4 << 20)
    data = make_raw_disk(d / "data.raw", 3 << 20, mbr=False, content=b"data disk")
    out["boot.raw"] = boot
    out["good.ova"] = build_ova(d / "good.ova", [boot], name="good")
    out["two.ova"] = build_ova(d / "two.ova", [boot, data], name="two")
    out["boot.vmdk"] = make_vmdk(boot, d / "boot-stream.vmdk")
    out["sparse.vmdk"] = make_vmdk(boot, d / "boot-sparse.vmdk", subformat="monolithicSparse")
    out["ovf-last.ova"] = build_ova(d / "ovf-last.ova", [boot], name="ovflast", ovf_first=False)
    out["missing-disk.ova"] = build_ova(d / "missing-disk.ova", [boot, data], name="missing", omit_disks=(1,))
    out["sparse.ova"] = build_ova(d / "sparse.ova", [boot], name="sparse", subformat="monolithicSparse")
    out["other-os.ova"] = build_ova(d / "other-os.ova", [boot], name="otheros", os_type="otherGuest")
    out["windows.ova"] = build_ova(d / "windows.ova", [boot], name="win", os_type="windows9Server64Guest")
    out["pax.ova"] = build_ova(d / "pax.ova", [boot], name="pax", tar_format=tarfile.PAX_FORMAT)
    marked = make_raw_disk(d / "marked.raw", 4 << 20, fail_message="Unsupported kernel version 2.6.32")
    out["marked.ova"] = build_ova(d / "marked.ova", [marked], name="marked")
    blank = make_raw_disk(d / "blank.raw", 4 << 20, mbr=False)
    out["blank.ova"] = build_ova(d / "blank.ova", [blank], name="blank")
    out["junk.ova"] = d / "junk.ova"
    out["junk.ova"].write_bytes(os.urandom(8192))
    return out


@pytest.fixture
def sim(vmimport_ready):
    """A clean server with a bucket and a correct role; tasks take 0.5 s."""
    vmimport_ready.aws.configure(task_duration=0.5, deleting_duration=0.1)
    return vmimport_ready


def upload(sim, path: Path, key: str | None = None, bucket: str | None = None) -> str:
    key = key or path.name
    sim.s3.upload_file(str(path), bucket or sim.bucket, key)
    return key


def ova_container(sim, key: str, bucket: str | None = None, fmt: str = "ova") -> dict:
    return {"Format": fmt, "UserBucket": {"S3Bucket": bucket or sim.bucket, "S3Key": key}}


def start(sim, key: str, fmt: str = "ova", **kwargs) -> str:
    return sim.ec2.import_image(DiskContainers=[ova_container(sim, key, fmt=fmt)], **kwargs)["ImportTaskId"]


def wait(ec2, task_id: str, timeout: float = 30.0) -> tuple[dict, list[tuple[str, str | None, str | None]]]:
    seen: list[tuple[str, str | None, str | None]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = ec2.describe_import_image_tasks(ImportTaskIds=[task_id])["ImportImageTasks"][0]
        step = (task["Status"], task.get("StatusMessage"), task.get("Progress"))
        if not seen or seen[-1] != step:
            seen.append(step)
        if task["Status"] in TERMINAL:
            return task, seen
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish: {seen}")


def assert_failed(sim, task_id: str, message: str) -> list:
    task, seen = wait(sim.ec2, task_id)
    assert task["Status"] == "deleted", seen
    assert task["StatusMessage"] == message
    assert "ImageId" not in task
    return seen


def client_error(excinfo) -> tuple[str, str]:
    err = excinfo.value.response["Error"]
    return err["Code"], err["Message"]


# --------------------------------------------------------------------------- success paths


def test_single_disk_ova_completes_with_ami_and_snapshot(sim, images):
    key = upload(sim, images["good.ova"], "exports/good.ova")
    resp = sim.ec2.import_image(
        Description="good vm",
        DiskContainers=[ova_container(sim, key)],
        TagSpecifications=[{"ResourceType": "import-image-task", "Tags": [{"Key": "Name", "Value": "good"}]}],
    )
    assert resp["Status"] == "active"
    assert resp["StatusMessage"] == "pending"
    assert resp["Tags"] == [{"Key": "Name", "Value": "good"}]
    assert resp["ImportTaskId"].startswith("import-ami-")

    task, seen = wait(sim.ec2, resp["ImportTaskId"])
    assert task["Status"] == "completed", seen
    order = ["pending", "validating", "validated", "converting", "updating", "booting", "preparing ami"]
    stages: list[str] = []
    for status, message, _p in seen:
        if status == "active" and (not stages or stages[-1] != message):
            stages.append(message)
    assert stages == sorted(set(stages), key=order.index), stages
    progress = [int(p) for s, _m, p in seen if p is not None]
    assert progress == sorted(progress) and progress[0] >= 1 and progress[-1] < 100

    assert task["Architecture"] == "x86_64"
    assert task["Platform"] == "Linux"
    assert task["LicenseType"] == "BYOL"
    assert task["BootMode"] == "legacy-bios"
    assert task["Description"] == "good vm"
    assert task["Tags"] == [{"Key": "Name", "Value": "good"}]
    (detail,) = task["SnapshotDetails"]
    assert detail["DeviceName"] == "/dev/sda1"
    assert detail["Format"] == "VMDK"
    assert detail["Status"] == "completed"
    assert detail["UserBucket"] == {"S3Bucket": sim.bucket, "S3Key": key}
    assert detail["DiskImageSize"] > 0

    image = sim.ec2.describe_images(ImageIds=[task["ImageId"]])["Images"][0]
    assert image["State"] == "available"
    assert image["Name"] == task["ImportTaskId"]
    assert image["RootDeviceName"] == "/dev/sda1"
    assert not image.get("Tags")  # TagSpecifications tag the task only
    (bdm,) = image["BlockDeviceMappings"]
    assert bdm["Ebs"]["SnapshotId"] == detail["SnapshotId"]
    snap = sim.ec2.describe_snapshots(SnapshotIds=[detail["SnapshotId"]])["Snapshots"][0]
    assert snap["VolumeSize"] == 1
    assert task["ImportTaskId"] in snap["Description"]
    # the snapshot belongs to the AMI
    with pytest.raises(ClientError) as excinfo:
        sim.ec2.delete_snapshot(SnapshotId=detail["SnapshotId"])
    assert client_error(excinfo)[0] == "InvalidSnapshot.InUse"


def test_two_disk_ova_gives_one_snapshot_per_disk(sim, images):
    key = upload(sim, images["two.ova"])
    task, _seen = wait(sim.ec2, start(sim, key))
    assert task["Status"] == "completed"
    details = task["SnapshotDetails"]
    assert [d["DeviceName"] for d in details] == ["/dev/sda1", "/dev/sdb"]
    assert len({d["SnapshotId"] for d in details}) == 2
    image = sim.ec2.describe_images(ImageIds=[task["ImageId"]])["Images"][0]
    assert [(m["DeviceName"], m["Ebs"]["SnapshotId"]) for m in image["BlockDeviceMappings"]] == [
        (d["DeviceName"], d["SnapshotId"]) for d in details
    ]
    snaps = sim.ec2.describe_snapshots(SnapshotIds=[d["SnapshotId"] for d in details])["Snapshots"]
    assert len(snaps) == 2


def test_vmdk_and_raw_disk_containers(sim, images):
    vmdk = upload(sim, images["boot.vmdk"], "disks/boot.vmdk")
    raw = upload(sim, images["boot.raw"], "disks/data.raw")
    resp = sim.ec2.import_image(
        DiskContainers=[
            {"Format": "VMDK", "UserBucket": {"S3Bucket": sim.bucket, "S3Key": vmdk}, "DeviceName": "/dev/sda1"},
            {"Format": "raw", "Url": f"s3://{sim.bucket}/{raw}", "DeviceName": "/dev/sdf"},
        ],
        Architecture="x86_64",
        Platform="Linux",
        BootMode="uefi",
    )
    task, _seen = wait(sim.ec2, resp["ImportTaskId"])
    assert task["Status"] == "completed"
    assert [d["Format"] for d in task["SnapshotDetails"]] == ["VMDK", "RAW"]
    assert [d["DeviceName"] for d in task["SnapshotDetails"]] == ["/dev/sda1", "/dev/sdf"]
    assert task["BootMode"] == "uefi"
    image = sim.ec2.describe_images(ImageIds=[task["ImageId"]])["Images"][0]
    assert image["BootMode"] == "uefi"
    assert [m["DeviceName"] for m in image["BlockDeviceMappings"]] == ["/dev/sda1", "/dev/sdf"]


def test_pax_tar_ova_and_windows_platform(sim, images):
    task, _seen = wait(sim.ec2, start(sim, upload(sim, images["pax.ova"])))
    assert task["Status"] == "completed"
    task, _seen = wait(sim.ec2, start(sim, upload(sim, images["windows.ova"]), Platform="Windows", LicenseType="AWS"))
    assert task["Status"] == "completed"
    assert task["Platform"] == "Windows"
    assert sim.ec2.describe_images(ImageIds=[task["ImageId"]])["Images"][0]["Platform"] == "windows"


def test_encrypted_import_uses_the_kms_key(sim, images):
    key_id = sim.aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    key = upload(sim, images["good.ova"])
    task, _seen = wait(sim.ec2, start(sim, key, Encrypted=True, KmsKeyId=key_id))
    assert task["Status"] == "completed"
    assert task["Encrypted"] is True
    assert task["KmsKeyId"] == key_id
    snap_id = task["SnapshotDetails"][0]["SnapshotId"]
    snap = sim.ec2.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"][0]
    assert snap["Encrypted"] is True
    with pytest.raises(ClientError) as excinfo:
        start(sim, key, Encrypted=True, KmsKeyId="11111111-2222-3333-4444-555555555555")
    assert client_error(excinfo)[0] == "InvalidParameter"
    # without KmsKeyId: the account's default EBS key
    task, _seen = wait(sim.ec2, start(sim, key, Encrypted=True))
    assert task["Status"] == "completed" and task["Encrypted"] is True and task["KmsKeyId"]


def test_client_token_is_idempotent(sim, images):
    key = upload(sim, images["good.ova"])
    first = start(sim, key, ClientToken="token-1", Description="a")
    assert start(sim, key, ClientToken="token-1", Description="a") == first
    assert start(sim, key, ClientToken="token-2", Description="a") != first
    with pytest.raises(ClientError) as excinfo:
        start(sim, key, ClientToken="token-1", Description="changed")
    assert client_error(excinfo)[0] == "IdempotentParameterMismatch"
    tasks = sim.ec2.describe_import_image_tasks()["ImportImageTasks"]
    assert len(tasks) == 2


def test_filters_tags_and_state(sim, images):
    key = upload(sim, images["good.ova"])
    good = start(
        sim, key, TagSpecifications=[{"ResourceType": "import-image-task", "Tags": [{"Key": "Name", "Value": "web-1"}]}]
    )
    bad = start(
        sim,
        upload(sim, images["junk.ova"]),
        TagSpecifications=[{"ResourceType": "import-image-task", "Tags": [{"Key": "team", "Value": "db"}]}],
    )
    wait(sim.ec2, good)
    wait(sim.ec2, bad)
    active = sim.ec2.describe_import_image_tasks(Filters=[{"Name": "task-state", "Values": ["active"]}])
    assert active["ImportImageTasks"] == []

    def ids(filters):
        return {t["ImportTaskId"] for t in sim.ec2.describe_import_image_tasks(Filters=filters)["ImportImageTasks"]}

    assert ids([{"Name": "tag:Name", "Values": ["web-1"]}]) == {good}
    assert ids([{"Name": "tag:Name", "Values": ["web-*"]}]) == {good}
    assert ids([{"Name": "tag:Name", "Values": ["db"]}]) == set()
    assert ids([{"Name": "tag-key", "Values": ["team"]}]) == {bad}
    assert ids([{"Name": "task-state", "Values": ["completed"]}]) == {good}
    assert ids([{"Name": "task-state", "Values": ["deleted", "completed"]}]) == {good, bad}
    page = sim.ec2.describe_import_image_tasks(MaxResults=1)
    assert len(page["ImportImageTasks"]) == 1 and page["NextToken"]
    rest = sim.ec2.describe_import_image_tasks(MaxResults=1, NextToken=page["NextToken"])
    assert {page["ImportImageTasks"][0]["ImportTaskId"], rest["ImportImageTasks"][0]["ImportTaskId"]} == {good, bad}
    with pytest.raises(ClientError) as excinfo:
        ids([{"Name": "bogus", "Values": ["x"]}])
    assert client_error(excinfo)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as excinfo:
        sim.ec2.describe_import_image_tasks(ImportTaskIds=["import-ami-0123456789abcdef0"])
    assert client_error(excinfo)[0].startswith("InvalidConversionTaskId")


# --------------------------------------------------------------------------- synchronous errors


BUCKET_KEY = {"S3Bucket": "vmimport-test", "S3Key": "good.ova"}


@pytest.mark.parametrize(
    ("kwargs", "code", "fragment"),
    [
        ({"LicenseType": "BYOL", "UsageOperation": "RunInstances"}, "InvalidParameter", "UsageOperation"),
        ({"KmsKeyId": "alias/aws/ebs"}, "InvalidParameter", "Encrypted"),
        ({"BootMode": "uefi-preferred"}, "InvalidParameter", "BootMode"),
        ({"Architecture": "sparc"}, "InvalidParameter", "Architecture"),
        ({"Platform": "Linux", "LicenseType": "AWS"}, "InvalidParameter", "BYOL"),
        (
            {"TagSpecifications": [{"ResourceType": "image", "Tags": [{"Key": "a", "Value": "b"}]}]},
            "InvalidParameter",
            "'image' is not a valid taggable resource type",
        ),
        ({"DiskContainers": [{"Format": "qcow2", "UserBucket": BUCKET_KEY}]}, "InvalidParameter", "qcow2"),
        ({"DiskContainers": [{"Format": "ova", "UserBucket": {"S3Bucket": "b"}}]}, "InvalidParameter", "S3Key"),
        ({"DiskContainers": [{"Format": "ova", "UserBucket": {"S3Key": "k"}}]}, "InvalidParameter", "S3Bucket"),
        ({"DiskContainers": [{"Format": "ova"}]}, "InvalidParameter", "Url or UserBucket"),
        ({"DiskContainers": [{"Url": "https://example.invalid/x.ova"}]}, "InvalidParameter", "Url"),
        (
            {
                "DiskContainers": [
                    {"Format": "ova", "UserBucket": BUCKET_KEY},
                    {"Format": "vmdk", "UserBucket": BUCKET_KEY},
                ]
            },
            "InvalidParameter",
            "OVA",
        ),
        ({"DiskContainers": [{"Format": "vmdk", "UserBucket": BUCKET_KEY}] * 22}, "InvalidParameter", "21"),
        ({"DiskContainers": []}, "MissingParameter", "DiskContainer"),
    ],
)
def test_bad_parameters_are_refused_synchronously(sim, kwargs, code, fragment):
    params = {"DiskContainers": [{"Format": "ova", "UserBucket": BUCKET_KEY}], **kwargs}
    with pytest.raises(ClientError) as excinfo:
        sim.ec2.import_image(**params)
    got_code, message = client_error(excinfo)
    assert got_code == code
    assert fragment in message
    assert sim.ec2.describe_import_image_tasks()["ImportImageTasks"] == []


def test_dry_run(sim, images):
    key = upload(sim, images["good.ova"])
    with pytest.raises(ClientError) as excinfo:
        start(sim, key, DryRun=True)
    assert client_error(excinfo)[0] == "DryRunOperation"
    assert sim.ec2.describe_import_image_tasks()["ImportImageTasks"] == []


# --------------------------------------------------------------------------- the role


def test_missing_role_is_refused(aws_clean, images):
    aws_clean.configure(task_duration=1.0)
    s3, ec2 = aws_clean.client("s3"), aws_clean.client("ec2")
    s3.create_bucket(Bucket="no-role")
    s3.upload_file(str(images["good.ova"]), "no-role", "good.ova")
    container = [{"Format": "ova", "UserBucket": {"S3Bucket": "no-role", "S3Key": "good.ova"}}]
    with pytest.raises(ClientError) as excinfo:
        ec2.import_image(DiskContainers=container)
    assert client_error(excinfo) == ("InvalidParameter", ROLE_MSG.format("vmimport"))
    with pytest.raises(ClientError) as excinfo:
        ec2.import_image(DiskContainers=container, RoleName="my-import-role")
    assert client_error(excinfo) == ("InvalidParameter", ROLE_MSG.format("my-import-role"))
    create_vmimport_role(aws_clean.client("iam"), "no-role", role_name="my-import-role")
    task_id = ec2.import_image(DiskContainers=container, RoleName="my-import-role")["ImportTaskId"]
    assert wait(ec2, task_id)[0]["Status"] == "completed"


def _trust(**condition):
    doc = json.loads(json.dumps(TRUST_POLICY))
    if condition:
        doc["Statement"][0]["Condition"] = condition
    else:
        del doc["Statement"][0]["Condition"]
    return doc


@pytest.mark.parametrize(
    ("trust", "accepted"),
    [
        (_trust(StringEquals={"sts:ExternalId": "vmimport"}), True),
        (_trust(StringEquals={"sts:Externalid": "vmimport", "aws:SourceAccount": "123456789012"}), True),
        (_trust(StringEquals={"sts:Externalid": "vmimport", "aws:SourceAccount": "999999999999"}), False),
        (_trust(StringEquals={"sts:Externalid": "other"}), False),
        (_trust(), False),
        (
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                        "Condition": {"StringEquals": {"sts:Externalid": "vmimport"}},
                    }
                ],
            },
            False,
        ),
    ],
)
def test_trust_policy(aws_clean, images, trust, accepted):
    iam, s3, ec2 = aws_clean.client("iam"), aws_clean.client("s3"), aws_clean.client("ec2")
    s3.create_bucket(Bucket="trust-test")
    s3.upload_file(str(images["good.ova"]), "trust-test", "good.ova")
    iam.create_role(RoleName="vmimport", AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName="vmimport", PolicyName="p", PolicyDocument=json.dumps(role_policy("trust-test")))
    container = [{"Format": "ova", "UserBucket": {"S3Bucket": "trust-test", "S3Key": "good.ova"}}]
    if accepted:
        assert ec2.import_image(DiskContainers=container)["Status"] == "active"
    else:
        with pytest.raises(ClientError) as excinfo:
            ec2.import_image(DiskContainers=container)
        assert client_error(excinfo) == ("InvalidParameter", ROLE_MSG.format("vmimport"))


PERMISSION_DENIED = "ClientError: " + ROLE_MSG.format("vmimport")
FORBIDDEN = "ClientError: Disk validation failed [We do not have access to the given resource. Reason 403 Forbidden]"


def _policy(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _allow(actions, resources):
    return {"Effect": "Allow", "Action": actions, "Resource": resources}


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (_policy(_allow("s3:*", "*")), None),
        (
            _policy(_allow(["s3:Get*", "s3:List*"], ["arn:aws:s3:::vmimport-test", "arn:aws:s3:::vmimport-test/*"])),
            None,
        ),
        (role_policy("vmimport-test", prefix="exports/"), None),
        # a key-prefix ARN does not grant the bucket-level actions
        (
            _policy(_allow(["s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"], "arn:aws:s3:::vmimport-test/*")),
            PERMISSION_DENIED,
        ),
        (_policy(_allow(["s3:GetBucketLocation", "s3:GetObject"], ["arn:aws:s3:::vmimport-test*"])), PERMISSION_DENIED),
        (_policy(_allow(["s3:GetBucketLocation", "s3:ListBucket"], "arn:aws:s3:::vmimport-test")), FORBIDDEN),
        (role_policy("vmimport-test", prefix="other/"), FORBIDDEN),
        (role_policy("another-bucket"), PERMISSION_DENIED),
        (_policy(_allow("s3:*", "*"), {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "*"}), FORBIDDEN),
    ],
)
def test_role_policy_permissions(sim, images, policy, message):
    sim.iam.put_role_policy(RoleName="vmimport", PolicyName="vmimport", PolicyDocument=json.dumps(policy))
    key = upload(sim, images["good.ova"], "exports/good.ova")
    task_id = start(sim, key)
    if message is None:
        assert wait(sim.ec2, task_id)[0]["Status"] == "completed"
    else:
        assert_failed(sim, task_id, message)


def test_attached_managed_policy_counts(sim, images):
    sim.iam.delete_role_policy(RoleName="vmimport", PolicyName="vmimport")
    arn = sim.iam.create_policy(PolicyName="vmimport-s3", PolicyDocument=json.dumps(role_policy(sim.bucket)))["Policy"][
        "Arn"
    ]
    key = upload(sim, images["good.ova"])
    assert_failed(sim, start(sim, key), PERMISSION_DENIED)
    sim.iam.attach_role_policy(RoleName="vmimport", PolicyArn=arn)
    assert wait(sim.ec2, start(sim, key))[0]["Status"] == "completed"


# --------------------------------------------------------------------------- S3 and formats


def test_bucket_in_another_region(sim, images):
    sim.s3.create_bucket(Bucket="eu-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    sim.iam.put_role_policy(
        RoleName="vmimport", PolicyName="all", PolicyDocument=json.dumps(_policy(_allow("s3:*", "*")))
    )
    key = upload(sim, images["good.ova"], bucket="eu-bucket")
    task_id = sim.ec2.import_image(DiskContainers=[ova_container(sim, key, bucket="eu-bucket")])["ImportTaskId"]
    assert_failed(sim, task_id, "ClientError: The given S3 bucket is not local to the region")


def test_missing_object(sim):
    not_found = (
        "ClientError: Disk validation failed [We do not have access to the given resource. Reason 404 Not Found]"
    )
    assert_failed(sim, start(sim, "no-such.ova"), not_found)


@pytest.mark.parametrize(
    ("image", "fmt", "message"),
    [
        ("junk.ova", "ova", ova_checks.MSG_UNSUPPORTED_OVA),
        ("ovf-last.ova", "ova", ova_checks.MSG_UNSUPPORTED_OVA),
        ("missing-disk.ova", "ova", ova_checks.MSG_UNSUPPORTED_OVA),
        ("sparse.ova", "ova", "ClientError: File uses unsupported compression algorithm 0"),
        ("sparse.vmdk", "vmdk", "ClientError: File uses unsupported compression algorithm 0"),
        ("good.ova", "vmdk", ova_checks.MSG_UNSUPPORTED_VMDK),
        ("boot.raw", "vhd", "ClientError: Disk validation failed [Unsupported VHD File Format]"),
    ],
)
def test_disk_validation_failures(sim, images, image, fmt, message):
    key = upload(sim, images[image])
    assert_failed(sim, start(sim, key, fmt=fmt), message)


def test_failure_goes_deleting_then_deleted(sim, images):
    sim.aws.configure(deleting_duration=600)
    resp = sim.ec2.import_image(DiskContainers=[ova_container(sim, upload(sim, images["junk.ova"]))])
    assert (resp["Status"], resp["StatusMessage"]) == ("active", "pending")
    deadline = time.monotonic() + 30
    while True:
        task = sim.ec2.describe_import_image_tasks(ImportTaskIds=[resp["ImportTaskId"]])["ImportImageTasks"][0]
        if task["Status"] != "active":
            break
        assert task["StatusMessage"] in ("pending", "validating")
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (task["Status"], task["StatusMessage"]) == ("deleting", ova_checks.MSG_UNSUPPORTED_OVA)
    sim.aws.configure(deleting_duration=0)
    task = sim.ec2.describe_import_image_tasks(ImportTaskIds=[resp["ImportTaskId"]])["ImportImageTasks"][0]
    assert (task["Status"], task["StatusMessage"]) == ("deleted", ova_checks.MSG_UNSUPPORTED_OVA)


def test_more_than_21_disks(sim, tmp_path):
    raws = [make_raw_disk(tmp_path / f"d{i}.raw", 64 << 10, mbr=i == 0) for i in range(22)]
    ova = build_ova(tmp_path / "many.ova", raws, name="many", manifest=False)
    assert_failed(sim, start(sim, upload(sim, ova)), ova_checks.MSG_TOO_MANY_DISKS)


def test_vmdk_footer_and_grain_damage(sim, images, tmp_path):
    data = bytearray(images["boot.vmdk"].read_bytes())
    # claim the grain directory is at the end (VMware layout) without writing a footer
    data[56:64] = (0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
    footless = tmp_path / "footless.vmdk"
    footless.write_bytes(bytes(data))
    assert_failed(sim, start(sim, upload(sim, footless), fmt="vmdk"), "ClientError: Footers not identical")

    # VMware's layout: ... footer marker, footer (header copy with the real gdOffset), end-of-stream marker
    footer = bytearray(data[:512])
    footer[56:64] = (26).to_bytes(8, "little")
    marker = (1).to_bytes(8, "little") + (0).to_bytes(4, "little") + (3).to_bytes(4, "little")
    vmware = tmp_path / "vmware.vmdk"
    vmware.write_bytes(bytes(data) + marker.ljust(512, b"\0") + bytes(footer) + b"\0" * 512)
    assert wait(sim.ec2, start(sim, upload(sim, vmware), fmt="vmdk"))[0]["Status"] == "completed"

    data = bytearray(images["boot.vmdk"].read_bytes())
    overhead = int.from_bytes(data[64:72], "little") * 512
    data[overhead + 12 : overhead + 20] = b"\xff" * 8  # corrupt the first grain's deflate stream
    broken = tmp_path / "broken.vmdk"
    broken.write_bytes(bytes(data))
    assert_failed(sim, start(sim, upload(sim, broken), fmt="vmdk"), "ClientError: Uncompressed data has invalid length")


# --------------------------------------------------------------------------- guest OS


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        ("other-os.ova", {}, "ClientError: Unknown OS / Missing OS files."),
        ("windows.ova", {}, "ClientError: Unknown OS / Missing OS files."),
        ("marked.ova", {}, "ClientError: Unsupported kernel version 2.6.32"),
        ("blank.ova", {}, "ClientError: No valid partitions. Not a valid volume."),
    ],
)
def test_guest_os_rejected_after_conversion_started(sim, images, image, kwargs, message):
    assert_failed(sim, start(sim, upload(sim, images[image]), **kwargs), message)


def test_fail_marker_in_raw_disk(sim, tmp_path):
    raw = make_raw_disk(tmp_path / "m.raw", 2 << 20, fail_message="Could not read fstab")
    assert_failed(sim, start(sim, upload(sim, raw), fmt="raw"), "ClientError: Could not read fstab")


# --------------------------------------------------------------------------- cancel


def test_cancel(sim, images):
    sim.aws.configure(task_duration=30.0)
    key = upload(sim, images["good.ova"])
    task_id = start(sim, key)
    sim.aws.configure(deleting_duration=600)
    resp = sim.ec2.cancel_import_task(ImportTaskId=task_id)
    assert (resp["ImportTaskId"], resp["PreviousState"], resp["State"]) == (task_id, "active", "deleting")
    task = sim.ec2.describe_import_image_tasks(ImportTaskIds=[task_id])["ImportImageTasks"][0]
    assert (task["Status"], task["StatusMessage"]) == ("deleting", "User initiated task cancelation")
    sim.aws.configure(deleting_duration=0.2)
    task, seen = wait(sim.ec2, task_id)
    assert task["Status"] == "deleted"
    assert task["StatusMessage"] == "User initiated task cancelation"
    with pytest.raises(ClientError) as excinfo:
        sim.ec2.cancel_import_task(ImportTaskId=task_id)
    assert client_error(excinfo)[0] == "IncorrectState"

    other = start(sim, key)
    sim.ec2.cancel_import_task(ImportTaskId=other, CancelReason="changed my mind")
    assert wait(sim.ec2, other)[0]["StatusMessage"] == "changed my mind"

    sim.aws.configure(task_duration=0.5)
    done = start(sim, key)
    assert wait(sim.ec2, done)[0]["Status"] == "completed"
    with pytest.raises(ClientError) as excinfo:
        sim.ec2.cancel_import_task(ImportTaskId=done)
    assert client_error(excinfo)[0] == "IncorrectState"
    with pytest.raises(ClientError) as excinfo:
        sim.ec2.cancel_import_task(ImportTaskId="import-ami-0123456789abcdef0")
    assert client_error(excinfo)[0] == "InvalidConversionTaskId"


# --------------------------------------------------------------------------- faults


def test_throttling_next_n_calls(sim, images):
    ec2 = sim.aws.client("ec2", config=NO_RETRY)
    sim.aws.configure(throttle={"DescribeImportImageTasks": {"next": 2}})
    for _attempt in range(2):
        with pytest.raises(ClientError) as excinfo:
            ec2.describe_import_image_tasks()
        assert client_error(excinfo) == ("RequestLimitExceeded", "Request limit exceeded.")
    ec2.describe_import_image_tasks()
    ec2.describe_images(Owners=["self"])  # other actions are not throttled
    counters = sim.aws.counters()
    assert counters["calls"]["DescribeImportImageTasks"] == 3
    assert counters["throttled"] == {"DescribeImportImageTasks": 2}
    # a default boto3 client retries RequestLimitExceeded by itself
    sim.aws.configure(throttle={"ImportImage": {"next": 1}})
    key = upload(sim, images["good.ova"])
    assert start(sim, key).startswith("import-ami-")
    assert sim.aws.counters()["throttled"]["ImportImage"] == 1


def test_throttling_every_nth_call(sim):
    ec2 = sim.aws.client("ec2", config=NO_RETRY)
    sim.aws.configure(throttle={"*": {"every": 3}})
    outcomes = []
    for _attempt in range(6):
        try:
            ec2.describe_import_image_tasks()
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])
    assert outcomes == ["ok", "ok", "RequestLimitExceeded"] * 2


def test_throttling_other_services(sim):
    iam = sim.aws.client("iam", config=NO_RETRY)
    s3 = sim.aws.client("s3", config=NO_RETRY)
    sim.aws.configure(throttle={"iam:GetRole": {"next": 1}, "s3:PUT": {"next": 1}, "*": {"every": 1}})
    with pytest.raises(ClientError) as excinfo:
        iam.get_role(RoleName="vmimport")
    assert client_error(excinfo) == ("Throttling", "Rate exceeded")
    assert iam.get_role(RoleName="vmimport")["Role"]["RoleName"] == "vmimport"
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket=sim.bucket, Key="k", Body=b"x")
    assert client_error(excinfo)[0] == "SlowDown"
    s3.put_object(Bucket=sim.bucket, Key="k", Body=b"x")
    throttled = sim.aws.counters()["throttled"]
    assert throttled == {"iam:GetRole": 1, "s3:PUT": 1}  # "*" is for EC2 actions only


def test_injected_errors(sim, images):
    key = upload(sim, images["good.ova"])
    sim.aws.configure(
        errors={
            "ImportImage": {"next": 2, "code": "ResourceCountLimitExceeded"},
            "DescribeImportImageTasks": {"next": 1, "code": "InternalError", "status": 500},
        }
    )
    for _attempt in range(2):
        with pytest.raises(ClientError) as excinfo:
            start(sim, key)
        assert client_error(excinfo)[0] == "ResourceCountLimitExceeded"
    task_id = start(sim, key)
    ec2 = sim.aws.client("ec2", config=NO_RETRY)
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_import_image_tasks(ImportTaskIds=[task_id])
    assert client_error(excinfo) == ("InternalError", "An internal error has occurred.")
    assert wait(ec2, task_id)[0]["Status"] == "completed"
    assert sim.aws.counters()["injected"] == {"ImportImage": 2, "DescribeImportImageTasks": 1}
    with pytest.raises(MotoVmImportError, match="needs code"):
        sim.aws.configure(errors={"ImportImage": {"next": 1}})


def test_resource_count_limit(sim, images):
    sim.aws.configure(max_active_tasks=1, task_duration=600)
    key = upload(sim, images["good.ova"])
    first = start(sim, key)
    with pytest.raises(ClientError) as excinfo:
        start(sim, key)
    assert client_error(excinfo)[0] == "ResourceCountLimitExceeded"
    sim.ec2.cancel_import_task(ImportTaskId=first)  # no longer active
    assert start(sim, key).startswith("import-ami-")


def test_iam_propagation_delay(aws_clean, images):
    aws_clean.configure(task_duration=0.5, iam_propagation_delay=600)
    s3, ec2 = aws_clean.client("s3"), aws_clean.client("ec2")
    s3.create_bucket(Bucket="fresh-role")
    s3.upload_file(str(images["good.ova"]), "fresh-role", "good.ova")
    create_vmimport_role(aws_clean.client("iam"), "fresh-role")
    container = [{"Format": "ova", "UserBucket": {"S3Bucket": "fresh-role", "S3Key": "good.ova"}}]
    with pytest.raises(ClientError) as excinfo:
        ec2.import_image(DiskContainers=container)
    assert client_error(excinfo) == ("InvalidParameter", ROLE_MSG.format("vmimport"))
    aws_clean.configure(iam_propagation_delay=1.0)
    deadline = time.monotonic() + 20
    while True:  # what a client does: retry while the role propagates
        try:
            task_id = ec2.import_image(DiskContainers=container)["ImportTaskId"]
            break
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "InvalidParameter"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert wait(ec2, task_id)[0]["Status"] == "completed"


# --------------------------------------------------------------------------- control API and launcher


def test_counters_count_each_call(sim):
    sim.aws.reset_counters()
    for _attempt in range(3):
        sim.ec2.describe_import_image_tasks()
    sim.aws.client("sts").get_caller_identity()
    calls = sim.aws.counters()["calls"]
    assert calls["DescribeImportImageTasks"] == 3
    assert calls["sts:GetCallerIdentity"] == 1
    sim.aws.reset_counters()
    assert sim.aws.counters() == {"calls": {}, "throttled": {}, "injected": {}}


def test_configure_rejects_bad_settings(aws_clean):
    with pytest.raises(MotoVmImportError, match="unknown setting 'task_duraton'"):
        aws_clean.configure(task_duraton=1)
    with pytest.raises(MotoVmImportError, match="task_duration must be a number"):
        aws_clean.configure(task_duration="fast")
    with pytest.raises(MotoVmImportError, match="throttle rule"):
        aws_clean.configure(throttle={"ImportImage": {"sometimes": 1}})
    assert aws_clean.config()["task_duration"] == aws_clean.settings["task_duration"]


def test_reset_clears_tasks_and_settings(sim, images):
    key = upload(sim, images["good.ova"])
    task_id = start(sim, key)
    sim.aws.configure(max_active_tasks=0)
    sim.aws.reset()
    assert sim.aws.config()["max_active_tasks"] == 20
    with pytest.raises(ClientError):
        sim.ec2.describe_import_image_tasks(ImportTaskIds=[task_id])
    assert sim.aws.client("s3").list_buckets()["Buckets"] == []


def test_launcher_subprocess_env_and_stop(aws_factory, images):
    server = aws_factory(task_duration=0.5, max_active_tasks=3)
    assert server.config()["max_active_tasks"] == 3
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server.env)
    assert set(server.env) >= {
        "AWS_URL",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
    }
    script = "import boto3; ec2 = boto3.client('ec2');print(ec2.describe_import_image_tasks()['ImportImageTasks'])"
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
    assert server.counters()["calls"]["DescribeImportImageTasks"] == 1
    host, port = server.url.rsplit(":", 1)
    pid = server.proc.pid
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_server_dies_with_its_parent(tmp_path):
    """A crashed test run must not leave the server behind."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, os\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})\n"
        "from tests.simulators.vmimport.launcher import MotoVmImport\n"
        "s = MotoVmImport(task_duration=1).start()\n"
        "print(s.proc.pid, flush=True)\n"
        "os._exit(0)\n"  # no cleanup, like a crash
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        raise AssertionError("server outlived its parent")


# --------------------------------------------------------------------------- ova_checks without a server


@pytest.mark.parametrize(
    ("os_type", "platform", "supported"),
    [
        ("debian12_64Guest", None, True),
        ("other5xLinux64Guest", None, True),
        ("otherLinux64Guest", None, True),
        ("ubuntu64Guest", None, True),
        ("otherGuest64", None, False),
        ("otherGuest", None, False),
        ("freebsd13_64Guest", None, False),
        ("windows7Guest", None, False),
        ("windows2019srv_64Guest", "Windows", True),
        ("win98Guest", "Windows", False),
        (None, None, True),
    ],
)
def test_os_families(os_type, platform, supported):
    assert ova_checks.os_supported(os_type, platform) is supported


def test_ova_checks_read_only_what_they_need(images):
    data = images["two.ova"].read_bytes()
    requested = []

    def read(offset, length):
        requested.append(length)
        return data[offset : offset + length]

    info = ova_checks.inspect_container("ova", read, len(data), "two.ova")
    assert [d.format for d in info.disks] == ["VMDK", "VMDK"]
    assert info.os_type == "debian12_64Guest"
    assert info.disks[0].capacity == 4 << 20
    assert info.disks[0].head[510:512] == b"\x55\xaa"
    assert sum(requested) < len(data)


def test_copy_image_of_an_imported_ami_copies_every_snapshot(sim, images):
    """Tools name the AMI by copying it (the import cannot name it) and deregister the original."""
    task, _seen = wait(sim.ec2, start(sim, upload(sim, images["two.ova"]), BootMode="uefi"))
    source_snaps = [d["SnapshotId"] for d in task["SnapshotDetails"]]
    copy_id = sim.ec2.copy_image(SourceImageId=task["ImageId"], SourceRegion="us-east-1", Name="web-1")["ImageId"]
    copy = sim.ec2.describe_images(ImageIds=[copy_id])["Images"][0]
    assert copy["Name"] == "web-1"
    assert copy["BootMode"] == "uefi"
    assert [m["DeviceName"] for m in copy["BlockDeviceMappings"]] == ["/dev/sda1", "/dev/sdb"]
    copy_snaps = [m["Ebs"]["SnapshotId"] for m in copy["BlockDeviceMappings"]]
    assert not set(copy_snaps) & set(source_snaps)
    described = sim.ec2.describe_snapshots(SnapshotIds=copy_snaps)["Snapshots"]
    assert all(task["ImageId"] in s["Description"] and copy_id in s["Description"] for s in described)
    sim.ec2.deregister_image(ImageId=task["ImageId"])
    for snap in source_snaps:  # left behind by the import; deletable once the AMI is gone
        sim.ec2.delete_snapshot(SnapshotId=snap)
    with pytest.raises(ClientError) as excinfo:
        sim.ec2.delete_snapshot(SnapshotId=copy_snaps[0])
    assert client_error(excinfo)[0] == "InvalidSnapshot.InUse"


def test_large_multipart_ova_is_read_from_moto_file_buffer(sim, tmp_path):
    """An OVA above moto's in-memory buffer (5 MiB), uploaded in parts, as the real pipeline does."""
    raw = make_raw_disk(tmp_path / "big.raw", 16 << 20, content=os.urandom(10 << 20))
    ova = build_ova(tmp_path / "big.ova", [raw], name="big")
    assert ova.stat().st_size > 10 << 20
    from boto3.s3.transfer import TransferConfig

    sim.s3.upload_file(str(ova), sim.bucket, "big.ova", Config=TransferConfig(multipart_threshold=5 << 20))
    task, _seen = wait(sim.ec2, start(sim, "big.ova"))
    assert task["Status"] == "completed"
    assert task["SnapshotDetails"][0]["DiskImageSize"] > 10 << 20


@pytest.mark.parametrize(("partition", "accepted"), [("aws-us-gov", True), ("aws", False)])
def test_partition_of_the_region_is_used_in_arns(aws_clean, images, partition, accepted):
    region = "us-gov-west-1"
    aws_clean.configure(task_duration=0.5)
    s3, iam, ec2 = (aws_clean.client(s, region=region) for s in ("s3", "iam", "ec2"))
    s3.create_bucket(Bucket="gov-bucket", CreateBucketConfiguration={"LocationConstraint": region})
    s3.upload_file(str(images["good.ova"]), "gov-bucket", "good.ova")
    iam.create_role(RoleName="vmimport", AssumeRolePolicyDocument=json.dumps(TRUST_POLICY))
    policy = role_policy("gov-bucket", partition=partition)
    iam.put_role_policy(RoleName="vmimport", PolicyName="vmimport", PolicyDocument=json.dumps(policy))
    task_id = ec2.import_image(
        DiskContainers=[{"Format": "ova", "UserBucket": {"S3Bucket": "gov-bucket", "S3Key": "good.ova"}}]
    )["ImportTaskId"]
    task, _seen = wait(ec2, task_id)
    if accepted:
        assert task["Status"] == "completed"
        assert ec2.describe_images(ImageIds=[task["ImageId"]])["Images"][0]["Name"] == task_id
    else:
        assert (task["Status"], task["StatusMessage"]) == ("deleted", PERMISSION_DENIED)


def test_cli_prints_exports_and_serves_until_stopped():
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.simulators.vmimport.launcher",
            "--task-duration",
            "2",
            "--config",
            '{"max_active_tasks": 4}',
        ],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        exports = {}
        for _attempt in range(6):
            line = proc.stdout.readline()
            name, _eq, value = line.strip().removeprefix("export ").partition("=")
            exports[name] = value
        assert exports["AWS_DEFAULT_REGION"] == exports["AWS_REGION"] == "us-east-1"
        assert exports["AWS_URL"] == exports["AWS_ENDPOINT_URL"]
        import urllib.request

        with urllib.request.urlopen(exports["AWS_URL"] + "/_vmimport/config", timeout=10) as resp:
            config = json.load(resp)
        assert (config["task_duration"], config["max_active_tasks"]) == (2.0, 4)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
    port = int(exports["AWS_URL"].rsplit(":", 1)[1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server goes with the CLI
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("server still listening after the CLI stopped")


def test_imds_support_sticks_like_on_ec2(aws_clean):
    """moto drops ModifyImageAttribute ImdsSupport; the simulator keeps it so modules can be idempotent."""
    ec2 = aws_clean.client("ec2")
    image_id = ec2.register_image(Name="imds", RootDeviceName="/dev/sda1")["ImageId"]
    assert "ImdsSupport" not in ec2.describe_images(ImageIds=[image_id])["Images"][0]
    ec2.modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v2.0"})
    assert ec2.describe_images(ImageIds=[image_id])["Images"][0]["ImdsSupport"] == "v2.0"
    with pytest.raises(ClientError, match="InvalidParameterValue"):
        ec2.modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v1.0"})
