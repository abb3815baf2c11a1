"""playbooks/migrate.yml end to end on the simulators, as a user runs it: two VMs in parallel, one of which
VM Import rejects; then a second run that must move nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.simulators.vcsim.launcher import disk_vm
from tests.simulators.vmimport.ova_builder import make_raw_disk

REPO = Path(__file__).resolve().parents[2]
BUCKET = "migrations"
FAILURE = "Unknown OS / Missing OS files."


def ansible_playbook(workdir, env, *args):
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), str(REPO / "playbooks" / "migrate.yml"), *args]
    full_env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_NOCOLOR="1",
        **env,
    )
    return subprocess.run(cmd, cwd=workdir, env=full_env, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture
def two_vms(tmp_path, vcsim_factory, aws_clean):
    good = make_raw_disk(tmp_path / "good.raw", 8 << 20, content=b"good")
    bad = make_raw_disk(tmp_path / "bad.raw", 8 << 20, fail_message=FAILURE)
    vcenter = vcsim_factory(
        config={
            "vms": [
                disk_vm("app-good", good, guest_id="debian12_64Guest"),
                disk_vm("app-bad", bad, guest_id="debian12_64Guest"),
            ]
        },
        defaults=False,
    )
    aws_clean.configure(task_duration=4.0)
    aws_clean.client("s3").create_bucket(Bucket=BUCKET)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "vms": {
                            "hosts": {
                                "app-good": {"esxi2ami_skip_guest_prepare": True},
                                "app-bad": {"esxi2ami_skip_guest_prepare": True},
                            }
                        }
                    }
                }
            }
        )
    )
    extra = tmp_path / "vars.yml"
    extra.write_text(
        yaml.safe_dump(
            {
                "esxi2ami_hosts": "vms",
                "vm_to_ami_s3_bucket": BUCKET,
                "vm_to_ami_tags": {"Project": "exit"},
                "vm_to_ami_poll_interval": 1,
                "vm_to_ami_progress_interval": 2,
            }
        )
    )
    env = dict(vcenter.env, **aws_clean.env)
    return tmp_path, inventory, extra, env, aws_clean


def test_two_vms_one_rejected_then_idempotent_rerun(two_vms):
    workdir, inventory, extra, env, server = two_vms
    first = ansible_playbook(workdir, env, "-i", str(inventory), "-e", "@%s" % extra, "-f", "4")
    out = first.stdout
    assert first.returncode == 2, out + first.stderr  # one host failed, the other finished
    # progress lines from both long-running steps
    assert "app-good | export:" in out and "app-good | import:" in out, out
    # the rejected VM stops with the service's message and a hint; the summary lists both VMs
    assert "ClientError: " + FAILURE in out, out
    summary = out[out.index("Migration summary") :]
    good_row = next(line for line in summary.splitlines() if line.strip().strip('"').startswith("app-good"))
    bad_row = next(line for line in summary.splitlines() if line.strip().strip('"').startswith("app-bad"))
    assert " ok " in good_row and "ami-" in good_row and "snap-" in good_row, good_row
    assert " failed " in bad_row and FAILURE in bad_row, bad_row

    ec2 = server.client("ec2")
    (image,) = ec2.describe_images(Owners=["self"])["Images"]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["Project"] == "exit" and tags["esxi2ami:source-vm"] == "app-good" and tags["Name"], tags
    for bdm in image["BlockDeviceMappings"]:
        snap = ec2.describe_snapshots(SnapshotIds=[bdm["Ebs"]["SnapshotId"]])["Snapshots"][0]
        assert {t["Key"]: t["Value"] for t in snap["Tags"]} == tags
    s3 = server.client("s3")
    head_before = s3.head_object(Bucket=BUCKET, Key="esxi2ami/app-good.ova")
    imports_before = server.counters()["calls"].get("ImportImage", 0)
    assert imports_before == 2

    # Re-run for the VM that made it: nothing is exported, uploaded or imported again.
    second = ansible_playbook(workdir, env, "-i", str(inventory), "-e", "@%s" % extra, "-e", "esxi2ami_hosts=app-good")
    assert second.returncode == 0, second.stdout + second.stderr
    recap = second.stdout[second.stdout.index("PLAY RECAP") :]
    good_recap = next(line for line in recap.splitlines() if line.startswith("app-good"))
    assert "changed=0" in good_recap and "failed=0" in good_recap, second.stdout
    assert server.counters()["calls"].get("ImportImage", 0) == imports_before
    head_after = s3.head_object(Bucket=BUCKET, Key="esxi2ami/app-good.ova")
    assert head_after["ETag"] == head_before["ETag"] and head_after["LastModified"] == head_before["LastModified"]


def test_staged_export_then_upload(tmp_path, vcsim_factory, aws_clean):
    """vm_to_ami_stream: false writes the OVA to a local directory, uploads it with amazon.aws.s3_object,
    and imports it like the streamed one."""
    disk = make_raw_disk(tmp_path / "staged.raw", 8 << 20, content=b"staged")
    vcenter = vcsim_factory(config={"vms": [disk_vm("app-staged", disk, guest_id="debian12_64Guest")]}, defaults=False)
    aws_clean.configure(task_duration=2.0)
    aws_clean.client("s3").create_bucket(Bucket=BUCKET)
    staging = tmp_path / "staging"
    staging.mkdir()
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"app-staged": {"esxi2ami_skip_guest_prepare": True}}}}))
    extra = tmp_path / "vars.yml"
    extra.write_text(
        yaml.safe_dump(
            {
                "vm_to_ami_s3_bucket": BUCKET,
                "vm_to_ami_stream": False,
                "vm_to_ami_local_dir": str(staging),
                "vm_to_ami_poll_interval": 1,
            }
        )
    )
    run = ansible_playbook(tmp_path, dict(vcenter.env, **aws_clean.env), "-i", str(inventory), "-e", "@%s" % extra)
    assert run.returncode == 0, run.stdout + run.stderr
    local = staging / "app-staged.ova"
    s3_copy = aws_clean.client("s3").get_object(Bucket=BUCKET, Key="esxi2ami/app-staged.ova")["Body"].read()
    assert local.read_bytes() == s3_copy  # the object is the staged file, byte for byte
    (image,) = aws_clean.client("ec2").describe_images(Owners=["self"])["Images"]
    assert {t["Key"]: t["Value"] for t in image["Tags"]}["esxi2ami:source-vm"] == "app-staged"
