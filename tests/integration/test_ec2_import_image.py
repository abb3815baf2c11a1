"""esxi2ami.migrate.ec2_import_image against the moto + VM Import server, through real ansible-playbook runs.

Real OVAs (qemu-img stream-optimized VMDKs) are uploaded to the server's S3; the service role is
made by esxi2ami.migrate.ec2_vmimport_role in the same playbook, as a user would. Task durations
and poll intervals are small; assertions are on behaviour (statuses, ids, tags, call counters),
never on time.
"""

import json

import pytest

from tests.integration.playbook import run_playbook
from tests.simulators.vmimport.ova_builder import build_ova, make_raw_disk

IMPORT = "esxi2ami.migrate.ec2_import_image"
BUCKET = "migration-bucket"
KEY = "exports/web01.ova"
URL = "s3://%s/%s" % (BUCKET, KEY)
UNKNOWN_OS = "Unknown OS / Missing OS files."


@pytest.fixture(scope="module")
def ovas(tmp_path_factory):
    """A good two-disk OVA and one whose boot disk the service rejects (bytes)."""
    tmp = tmp_path_factory.mktemp("ovas")
    good_dir, bad_dir = tmp / "good", tmp / "bad"
    good_dir.mkdir()
    bad_dir.mkdir()
    disks = [make_raw_disk(good_dir / "d0.raw", content=b"boot"), make_raw_disk(good_dir / "d1.raw", content=b"data")]
    good = build_ova(good_dir / "web01.ova", disks, name="web01").read_bytes()
    bad_disk = make_raw_disk(bad_dir / "d0.raw", fail_message=UNKNOWN_OS)
    bad = build_ova(bad_dir / "bad.ova", [bad_disk], name="bad").read_bytes()
    return {"good": good, "bad": bad}


@pytest.fixture
def sim(aws_clean, ovas):
    """Clean server with the bucket and the good OVA uploaded; fast tasks."""
    aws_clean.configure(task_duration=3.0)
    s3 = aws_clean.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=ovas["good"])
    return aws_clean


def role_task(**params):
    params.setdefault("s3_locations", [BUCKET + "/exports/"])
    return {"name": "role", "esxi2ami.migrate.ec2_vmimport_role": params}


def import_task(label="import", **params):
    params.setdefault("name", "web01")
    params.setdefault("s3_url", URL)
    if params["s3_url"] is None:
        del params["s3_url"]  # a null option still counts as given for mutually_exclusive
    params.setdefault("poll_interval", 0.5)
    params.setdefault("wait_timeout", 300)
    return {"name": label, IMPORT: params, "register": "out", "ignore_errors": True}


def run(server, tasks, **kwargs):
    res = run_playbook(tasks, env=server.env, **kwargs)
    assert res.data, res
    return res


def calls(server, action):
    return server.counters()["calls"].get(action, 0)


def tags_of(ec2, resource_id):
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])["Tags"]
    return {t["Key"]: t["Value"] for t in tags}


def ok(res, name="import"):
    out = res.task(name)
    assert not out.get("failed"), out.get("msg", out)
    return out


def test_import_tags_ami_and_every_snapshot_then_rerun_is_unchanged(sim, tmp_path):
    ec2 = sim.client("ec2")
    progress = tmp_path / "progress.json"
    params = dict(tags={"migrated-from": "vcenter01"}, progress_file=str(progress), boot_mode="legacy-bios")

    # check mode: predicts an import without calling ImportImage
    res = run(sim, [role_task(), import_task(**params)], check=True, diff=True)
    out = ok(res)
    assert out["changed"] is True and out["status"] == "absent"
    assert out["diff"]["before"] == {"status": "absent"}
    assert calls(sim, "ImportImage") == 0

    res = run(sim, [role_task(), import_task(**params)])
    out = ok(res)
    assert out["changed"] is True and out["status"] == "completed" and out["resumed"] is False
    assert out["import_task_id"].startswith("import-ami-")
    assert out["image_id"].startswith("ami-")
    assert len(out["snapshot_ids"]) == 2, out["snapshot_ids"]
    assert out["task"]["tags"] == {"Name": "web01", "migrated-from": "vcenter01"}
    assert out["tags"] == {"Name": "web01", "migrated-from": "vcenter01"}
    assert out["image"]["tags"] == {"Name": "web01", "migrated-from": "vcenter01"}
    wanted = {"Name": "web01", "migrated-from": "vcenter01"}
    assert tags_of(ec2, out["image_id"]) == wanted
    for snapshot_id in out["snapshot_ids"]:
        assert tags_of(ec2, snapshot_id) == wanted, snapshot_id
    image = ec2.describe_images(ImageIds=[out["image_id"]])["Images"][0]
    assert sorted(m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]) == sorted(out["snapshot_ids"])
    record = json.loads(progress.read_text())
    assert record["phase"] == "done" and record["import_task_id"] == out["import_task_id"]
    assert record["image_id"] == out["image_id"] and record["status"] == "completed"
    assert calls(sim, "ImportImage") == 1

    # re-run: finds the completed task by name, same result, no new ImportImage, no writes
    tag_calls = calls(sim, "CreateTags")
    res = run(sim, [role_task(), import_task(**params)], diff=True)
    again = ok(res)
    assert again["changed"] is False
    assert again["diff"]["before"] == again["diff"]["after"]
    for key in ("import_task_id", "image_id", "snapshot_ids", "status"):
        assert again[key] == out[key], key
    assert calls(sim, "ImportImage") == 1
    assert calls(sim, "CreateTags") == tag_calls

    # check mode on the finished import: nothing to do
    res = run(sim, [import_task(**params)], check=True)
    assert ok(res)["changed"] is False

    # a tag removed by hand is put back (and only that is a change)
    ec2.delete_tags(Resources=[out["snapshot_ids"][1]], Tags=[{"Key": "migrated-from"}])
    res = run(sim, [import_task(**params)])
    assert ok(res)["changed"] is True
    assert tags_of(ec2, out["snapshot_ids"][1]) == wanted
    assert calls(sim, "ImportImage") == 1


def test_failed_task_fails_at_once_with_message_and_hint(sim, ovas):
    s3 = sim.client("s3")
    s3.put_object(Bucket=BUCKET, Key="exports/bad.ova", Body=ovas["bad"])
    # a failed task stays "deleting" far longer than the run: the module must not wait for "deleted"
    sim.configure(deleting_duration=600)
    res = run(sim, [role_task(), import_task(label="bad", name="bad01", s3_url="s3://%s/exports/bad.ova" % BUCKET)])
    out = res.task("bad")
    assert out["failed"] is True
    assert out["status"] == "deleting"
    assert out["status_message"] == "ClientError: " + UNKNOWN_OS
    assert UNKNOWN_OS in out["msg"] and out["import_task_id"] in out["msg"]
    assert "guest_prepare" in out["hint"] and out["hint"] in out["msg"]

    # the failed task lets a new import start (new ClientToken); it fails the same way
    res = run(sim, [import_task(label="bad", name="bad01", s3_url="s3://%s/exports/bad.ova" % BUCKET)])
    second = res.task("bad")
    assert second["failed"] is True and second["import_task_id"] != out["import_task_id"]
    assert calls(sim, "ImportImage") == 2


def test_timeout_leaves_task_running_and_second_run_resumes(sim, tmp_path):
    sim.configure(task_duration=15.0)
    progress = tmp_path / "p.json"
    res = run(sim, [role_task(), import_task(wait_timeout=1, progress_file=str(progress))])
    out = res.task("import")
    assert out["failed"] is True and out["status"] == "active"
    task_id = out["import_task_id"]
    assert task_id in out["msg"] and "keeps running" in out["msg"] and "resume" in out["msg"]
    assert json.loads(progress.read_text())["phase"] == "timeout"
    ec2 = sim.client("ec2")
    assert ec2.describe_import_image_tasks(ImportTaskIds=[task_id])["ImportImageTasks"][0]["Status"] == "active"

    res = run(sim, [import_task(progress_file=str(progress))])
    again = ok(res)
    assert again["resumed"] is True and again["import_task_id"] == task_id
    assert again["status"] == "completed" and len(again["snapshot_ids"]) == 2
    assert again["changed"] is True  # the AMI and snapshots were tagged by this run
    assert calls(sim, "ImportImage") == 1


def test_wait_false_then_cancel_then_new_import(sim):
    sim.configure(task_duration=300.0)  # far longer than the runs below, even on a loaded machine
    res = run(sim, [role_task(), import_task(wait=False)])
    started = ok(res)
    assert started["changed"] is True and started["status"] == "active"

    # a second run with wait: false finds the active task: no change, no new task
    res = run(sim, [import_task(wait=False)])
    found = ok(res)
    assert found["changed"] is False and found["resumed"] is True
    assert found["import_task_id"] == started["import_task_id"]

    res = run(sim, [import_task(state="absent", cancel_reason="wrong disk")], check=True)
    assert ok(res)["changed"] is True
    res = run(sim, [import_task(state="absent", cancel_reason="wrong disk")])
    cancelled = ok(res)
    assert cancelled["changed"] is True and cancelled["status"] in ("deleting", "deleted")
    assert cancelled["import_task_id"] == started["import_task_id"]
    assert calls(sim, "CancelImportTask") == 1
    res = run(sim, [import_task(state="absent")])
    assert ok(res)["changed"] is False

    # the cancelled task does not block a new import
    sim.configure(task_duration=2.0)
    res = run(sim, [import_task()])
    new = ok(res)
    assert new["import_task_id"] != started["import_task_id"] and new["status"] == "completed"
    assert calls(sim, "ImportImage") == 2


def test_retries_throttling_and_role_propagation(sim):
    # the role is created in the same run and is invisible to the service for a few seconds;
    # EC2 calls are throttled too
    sim.configure(
        iam_propagation_delay=20.0,
        throttle={"DescribeImportImageTasks": {"next": 3}, "CreateTags": {"next": 1}, "ImportImage": {"next": 1}},
    )
    res = run(sim, [role_task(), import_task()])
    out = ok(res)
    assert out["status"] == "completed"
    counters = sim.counters()
    assert counters["throttled"]["DescribeImportImageTasks"] == 3
    assert counters["throttled"]["ImportImage"] == 1
    # one throttled, at least one refused for the role, then the one that started the task
    assert out["import_retries"]["role propagation"] >= 1
    assert counters["calls"]["ImportImage"] >= 3
    ec2 = sim.client("ec2")
    assert len(ec2.describe_import_image_tasks()["ImportImageTasks"]) == 1


def test_waits_for_a_free_import_slot(sim):
    sim.configure(max_active_tasks=1, task_duration=12.0)
    # one run: the first import takes the only slot, the second waits for it to free up
    res = run(
        sim,
        [
            role_task(),
            import_task(label="first", name="first", wait=False),
            import_task(label="second", name="second", limit_wait_timeout=120),
        ],
    )
    assert ok(res, "first")["status"] == "active"
    out = ok(res, "second")
    assert out["status"] == "completed" and out["import_retries"]["import slot"] >= 1
    assert sim.counters()["calls"]["ImportImage"] >= 3  # first, refused at least once, then accepted


def test_max_active_imports_waits_for_our_own_cap(sim):
    # The service's quota is 1 too: had the module not waited, ImportImage would have been refused first.
    sim.configure(max_active_tasks=1, task_duration=6.0)
    res = run(
        sim,
        [
            role_task(),
            import_task(label="first", name="first", wait=False),
            import_task(label="second", name="second", max_active_imports=1, poll_interval=0.5),
        ],
    )
    assert ok(res, "first")["status"] == "active"
    second = ok(res, "second")
    assert second["status"] == "completed" and not second["import_retries"], second
    assert sim.counters()["calls"]["ImportImage"] == 2  # never refused: the module waited before asking


def test_ami_name_imds_and_delete_source(sim):
    ec2 = sim.client("ec2")
    s3 = sim.client("s3")
    key_arn = sim.client("kms").create_key(Description="AMI key")["KeyMetadata"]["Arn"]
    params = dict(
        ami_name="web01-migrated",
        imds_support="v2.0",
        delete_source=True,
        tags={"env": "prod"},
        encrypted=True,
        kms_key_id=key_arn,
    )
    res = run(sim, [role_task(kms_key_arns=[key_arn]), import_task(**params)])
    out = ok(res)
    assert out["changed"] is True and out["ami_name"] == "web01-migrated"
    assert out["task"]["encrypted"] is True and out["task"]["kms_key_id"] == key_arn
    intermediate = out["task"]["image_id"]
    assert out["image_id"] != intermediate
    assert ec2.describe_images(Filters=[{"Name": "image-id", "Values": [intermediate]}])["Images"] == []
    image = ec2.describe_images(ImageIds=[out["image_id"]])["Images"][0]
    assert image["Name"] == "web01-migrated"
    assert tags_of(ec2, out["image_id"]) == {"Name": "web01", "env": "prod"}
    assert out["snapshot_ids"]
    for snapshot_id in out["snapshot_ids"]:
        assert tags_of(ec2, snapshot_id) == {"Name": "web01", "env": "prod"}
    remaining = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    for detail in out["task"]["snapshot_details"]:
        assert detail["snapshot_id"] not in remaining  # the intermediate image's snapshots are gone
    assert out["source_deleted"] == [URL]
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert calls(sim, "ModifyImageAttribute") == 1
    assert calls(sim, "CopyImage") == 1

    # re-run finds the named AMI: no copy, no import, nothing to delete. (imds_support is left out here:
    # moto does not report ImdsSupport in DescribeImages, so the module could not see it is already set.)
    params.pop("imds_support")
    res = run(sim, [import_task(**params)])
    again = ok(res)
    assert again["changed"] is False and again["image_id"] == out["image_id"]
    assert again["source_deleted"] == []
    assert calls(sim, "CopyImage") == 1 and calls(sim, "ImportImage") == 1


def test_disk_containers_two_raw_disks(sim, tmp_path):
    s3 = sim.client("s3")
    ec2 = sim.client("ec2")
    for index, content in enumerate((b"boot", b"data")):
        disk = make_raw_disk(tmp_path / ("disk%d.raw" % index), content=content)
        s3.put_object(Bucket=BUCKET, Key="exports/legacy02/disk%d.raw" % index, Body=disk.read_bytes())
    containers = [
        {"s3_url": "s3://%s/exports/legacy02/disk0.raw" % BUCKET, "device_name": "/dev/sda1"},
        {"s3_bucket": BUCKET, "s3_key": "exports/legacy02/disk1.raw", "format": "raw", "description": "data"},
    ]
    # the AMI and snapshots may carry another Name than the import's identity (the task keeps Name=legacy02)
    tags = {"Name": "Legacy 02"}
    res = run(sim, [role_task(), import_task(name="legacy02", s3_url=None, disk_containers=containers, tags=tags)])
    out = ok(res)
    assert out["task"]["tags"] == {"Name": "legacy02"}
    assert tags_of(ec2, out["image_id"]) == {"Name": "Legacy 02"}
    assert out["status"] == "completed" and len(out["snapshot_ids"]) == 2
    assert out["sources"] == [
        "s3://%s/exports/legacy02/disk0.raw" % BUCKET,
        "s3://%s/exports/legacy02/disk1.raw" % BUCKET,
    ]
    assert [d["format"] for d in out["task"]["snapshot_details"]] == ["RAW", "RAW"]
    for snapshot_id in out["snapshot_ids"]:
        assert tags_of(ec2, snapshot_id) == {"Name": "Legacy 02"}
    # found again by its name: unchanged
    res = run(sim, [import_task(name="legacy02", s3_url=None, disk_containers=containers, tags=tags)])
    again = ok(res)
    assert again["changed"] is False and again["import_task_id"] == out["import_task_id"]


def test_bad_input_fails_before_any_call(sim, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    res = run(
        sim,
        [
            import_task(label="scheme", s3_url="https://%s.s3.amazonaws.com/%s" % (BUCKET, KEY)),
            import_task(label="folder", s3_url="s3://%s/exports/" % BUCKET),
            import_task(label="format", s3_url="s3://%s/exports/web01.bin" % BUCKET),
            import_task(label="both-licenses", license_type="BYOL", usage_operation="RunInstances:0010"),
            import_task(label="kms", kms_key_id="alias/x"),
            import_task(label="no-source", s3_url=None),
            import_task(
                label="ova-and-more",
                s3_url=None,
                disk_containers=[{"s3_url": URL}, {"s3_url": "s3://%s/exports/d1.vmdk" % BUCKET}],
            ),
            import_task(label="half-container", s3_url=None, disk_containers=[{"s3_bucket": BUCKET}]),
            import_task(label="aws-tag", tags={"aws:owner": "me"}),
            import_task(label="progress", progress_file=str(tmp_path / "file" / "p.json")),
        ],
    )
    assert "only s3:// URLs" in res.task("scheme")["msg"]
    assert "names a folder" in res.task("folder")["msg"]
    assert "set format to one of" in res.task("format")["msg"]
    assert "mutually exclusive" in res.task("both-licenses")["msg"]
    assert "encrypted" in res.task("kms")["msg"]
    assert "s3_url" in res.task("no-source")["msg"]
    assert "OVA must be the only disk container" in res.task("ova-and-more")["msg"]
    assert "disk_containers[0]" in res.task("half-container")["msg"]
    assert "reserved by AWS: aws:owner" in res.task("aws-tag")["msg"]
    labels = ("scheme", "folder", "format", "both-licenses", "kms", "no-source", "ova-and-more", "half-container")
    assert "cannot be written" in res.task("progress")["msg"]
    for name in labels + ("aws-tag", "progress"):
        assert res.task(name)["failed"] is True
    assert calls(sim, "ImportImage") == 0
