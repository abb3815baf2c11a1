"""The bad-input table (docs/bad_input.md), every row a test.

Each row runs the module, or playbooks/migrate.yml for role-level rows, the way a user would (ansible-playbook
against the vSphere simulator and the moto + VM Import server), checks that the message names the input and the
fix, and that nothing happened: no VM power change, no S3 object written, no multipart upload, no IAM change, no
ImportImage or other EC2 write (the simulator's call counters), no file created by a name that looks like shell.

Rows that share a simulator state run in one playbook (module level) or one migrate.yml run with one inventory
host per row (role level); the parametrized tests then check each row's own result and the shared "nothing
happened" evidence, which holds for every row of the run.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pyVmomi import vim

from tests.integration.playbook import run_playbook
from tests.simulators.vcsim.launcher import Vcsim, disk_vm
from tests.simulators.vmimport.ova_builder import build_ova, make_raw_disk, make_vmdk

REPO = Path(__file__).resolve().parents[2]
BUCKET = "migrations"
FAR_BUCKET = "far-away"  # in eu-west-1; the imports run in us-east-1
FAR_REGION = "eu-west-1"
EXPORT = "esxi2ami.migrate.vsphere_ova_export"
IMPORT = "esxi2ami.migrate.ec2_import_image"
INFO = "esxi2ami.migrate.ova_info"
# Calls that would change something: any of them in the counters means a row was not refused in time.
WRITES_EC2 = ("ImportImage", "CancelImportTask", "CreateTags", "CopyImage", "RegisterImage", "ModifyImageAttribute")
WRITES_OTHER = ("s3:PUT", "s3:POST", "s3:DELETE", "iam:CreateRole", "iam:PutRolePolicy", "iam:UpdateAssumeRolePolicy")
EXAMPLE_URL = "s3://my-bucket/exports/vm1.ova"
PWNED = Path.home() / "esxi2ami-pwned"


def _vm_powers(sim):
    si = sim.connect()
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return {"%s (%s)" % (v.name, v._moId): str(v.runtime.powerState) for v in view.view}
    finally:
        view.Destroy()


def _objects(s3):
    out = {}
    for bucket in (b["Name"] for b in s3.list_buckets()["Buckets"]):
        out[bucket] = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
        out[bucket + " uploads"] = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return out


def _snapshot(sim, server):
    """Everything a refused input must leave as it was."""
    iam = server.client("iam")
    ec2 = server.client("ec2")
    return {
        "vm power": _vm_powers(sim),
        "s3": _objects(server.client("s3")),
        "iam roles": sorted(r["RoleName"] for r in iam.list_roles()["Roles"]),
        "amis": sorted(i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]),
        "import tasks": len(ec2.describe_import_image_tasks().get("ImportImageTasks", [])),
    }


def _writes(server):
    calls = server.counters()["calls"]
    return {k: v for k, v in calls.items() if v and (k in WRITES_EC2 or k in WRITES_OTHER)}


def _assert_said(msg, expected):
    flat = " ".join(msg.split())
    for text in expected:
        assert " ".join(text.split()) in flat, "%r not in the message: %s" % (text, msg)


# ---------------------------------------------------------------------------------------------------------------
# Shared simulators and inputs
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Disks, a good OVA and the broken ones (not a tar, truncated, non-stream-optimized VMDK, OVF not first)."""
    tmp = tmp_path_factory.mktemp("bad-input")
    if PWNED.exists():
        PWNED.unlink()  # left by some earlier run: start from a known state
    boot = make_raw_disk(tmp / "boot.raw", 4 << 20, content=b"boot")
    (tmp / "good").mkdir()
    good = build_ova(tmp / "good" / "vm.ova", [boot])
    (tmp / "sparse").mkdir()
    sparse = build_ova(tmp / "sparse" / "vm.ova", [boot], subformat="monolithicSparse")
    notova = tmp / "notova.ova"
    notova.write_bytes(b"<html>403 Forbidden</html>\n" * 64)
    truncated = tmp / "truncated.ova"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    # A VM whose disk file vanishes after the simulator started: the export cannot read it.
    lost = make_vmdk(boot, tmp / "lost-disk.vmdk")
    return {
        "dir": tmp,
        "boot": boot,
        "good": good,
        "sparse": sparse,
        "notova": notova,
        "truncated": truncated,
        "lost_vmdk": lost,
        "pwned": PWNED,
    }


def _shell_name(inputs):
    """A VM/import/tag name that creates ~/esxi2ami-pwned if anything hands it to a shell (no '/': vSphere
    names become datastore paths)."""
    assert inputs["pwned"] == PWNED
    return "a'b $(cd;touch %s) c" % PWNED.name


@pytest.fixture(scope="module")
def sim(inputs):
    config = {
        "vms": [
            disk_vm("web01", inputs["boot"], guest_id="debian12_64Guest"),
            disk_vm("efi01", inputs["boot"], guest_id="debian12_64Guest", firmware="efi"),
            disk_vm("twin", inputs["boot"], folder="prod", guest_id="debian12_64Guest"),
            disk_vm("twin", inputs["boot"], folder="test", guest_id="debian12_64Guest"),
            disk_vm("lost-disk", inputs["lost_vmdk"], guest_id="debian12_64Guest"),
            disk_vm(_shell_name(inputs), inputs["boot"], guest_id="debian12_64Guest"),
        ]
    }
    with Vcsim(config=config, defaults=False, shutdown_delay=0.2) as server:
        yield server


def _prepare_aws(server, inputs):
    server.reset()
    server.configure(task_duration=3.0)
    s3 = server.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    server.client("s3", region=FAR_REGION).create_bucket(
        Bucket=FAR_BUCKET, CreateBucketConfiguration={"LocationConstraint": FAR_REGION}
    )
    for name in ("good", "sparse", "notova", "truncated"):
        s3.upload_file(str(inputs[name]), BUCKET, "ovas/%s.ova" % name)
    server.reset_counters()


def _env(sim_server, aws_server):
    return dict(sim_server.env, **aws_server.env)


# ---------------------------------------------------------------------------------------------------------------
# Module level: one playbook, one task per row
# ---------------------------------------------------------------------------------------------------------------


def _imp(**params):
    params.setdefault("name", "web01")
    params.setdefault("s3_url", "s3://%s/ovas/good.ova" % BUCKET)
    params.setdefault("wait", False)
    params.setdefault("progress_file", "")
    return {IMPORT: params}


def _exp(**params):
    params.setdefault("name", "web01")
    params.setdefault("dest", "s3://%s/exports/web01.ova" % BUCKET)
    return {EXPORT: params}


def _info(src):
    return {INFO: {"src": src, "validate": True}}


LONG_TAGS = dict(("tag%02d" % i, "v") for i in range(50))  # + Name = 51

# id -> (where the input is given, task, what the message must say: the input and the fix)
MODULE_ROWS = {
    # malformed S3 URLs
    "s3_url-https": (
        "ec2_import_image s3_url",
        _imp(s3_url="https://%s.s3.amazonaws.com/ovas/good.ova" % BUCKET),
        ["s3_url", "only s3:// URLs are accepted", EXAMPLE_URL],
    ),
    "s3_url-no-key": ("ec2_import_image s3_url", _imp(s3_url="s3://" + BUCKET), ["names a bucket but no object key"]),
    "s3_url-folder": (
        "ec2_import_image s3_url",
        _imp(s3_url="s3://%s/ovas/" % BUCKET),
        ["ends with '/', which names a folder", "add the file name"],
    ),
    "s3_url-bucket-name": (
        "ec2_import_image s3_url",
        _imp(s3_url="s3://My_Bucket/ovas/good.ova"),
        ["'My_Bucket' is not a valid S3 bucket name", "lowercase letters, digits"],
    ),
    "s3_url-not-a-url": (
        "ec2_import_image s3_url",
        _imp(s3_url="%s/ovas/good.ova" % BUCKET),
        ["is not a URL: give it as " + EXAMPLE_URL],
    ),
    "s3_url-whitespace": (
        "ec2_import_image s3_url",
        _imp(s3_url=" s3://%s/ovas/good.ova" % BUCKET),
        ["leading or trailing whitespace: remove it"],
    ),
    "s3_url-control-chars": (
        "ec2_import_image s3_url",
        _imp(s3_url="s3://%s/ovas/go\nod.ova" % BUCKET),
        ["the object key contains control characters (newline, tab ...): remove them"],
    ),
    "s3_bucket-name": (
        "ec2_import_image s3_bucket",
        {IMPORT: dict(name="web01", s3_bucket="bad..bucket", s3_key="x.ova", wait=False, progress_file="")},
        ["s3_bucket 'bad..bucket' is not a valid S3 bucket name: it must have no adjacent dots"],
    ),
    "dest-no-key": ("vsphere_ova_export dest", _exp(dest="s3://" + BUCKET), ["must look like s3://bucket/key.ova"]),
    "dest-bucket-name": (
        "vsphere_ova_export dest",
        _exp(dest="s3://My_Bucket/web01.ova"),
        ["dest 's3://My_Bucket/web01.ova': bucket 'My_Bucket' is not a valid S3 bucket name: it must be 3-63"],
    ),
    "dest-scheme": (
        "vsphere_ova_export dest",
        _exp(dest="https://%s.s3.amazonaws.com/web01.ova" % BUCKET),
        ["only local paths and s3://bucket/key URLs are supported"],
    ),
    "dest-missing-bucket": (
        "vsphere_ova_export dest",
        _exp(dest="s3://no-such-bucket/web01.ova"),
        ["bucket 'no-such-bucket' does not exist: create it first"],
    ),
    "src-no-key": ("ova_info src", _info("s3://" + BUCKET), ["must look like s3://bucket/key.ova"]),
    # region
    "bucket-other-region": (
        "ec2_import_image s3_url",
        _imp(s3_url="s3://%s/ovas/good.ova" % FAR_BUCKET),
        [
            "S3 bucket %s (from s3_url) is in region %s but the import runs in us-east-1" % (FAR_BUCKET, FAR_REGION),
            "run the import in %s (the region option or AWS_REGION), or copy the image to a bucket in us-east-1"
            % FAR_REGION,
        ],
    ),
    "bucket-missing": (
        "ec2_import_image s3_url",
        _imp(s3_url="s3://no-such-bucket/ovas/good.ova"),
        ["S3 bucket no-such-bucket (from s3_url) does not exist", "fix the bucket name, or create the bucket"],
    ),
    # VMs
    "vm-unknown": (
        "vsphere_ova_export name",
        _exp(name="web-01"),
        ["no VM named 'web-01': check the name (exact match, case and spaces count), or identify the VM by uuid"],
    ),
    "vm-ambiguous": (
        "vsphere_ova_export name",
        _exp(name="twin"),
        ["2 VMs are named 'twin'", "/DC0/vm/prod/twin", "/DC0/vm/test/twin", "Set datacenter/folder, or use uuid"],
    ),
    "vm-unknown-moid": (
        "vsphere_ova_export moid",
        _exp(name=None, moid="vm-999999"),
        ["no VM with moid 'vm-999999': check the id"],
    ),
    # AMI names
    "ami_name-short": ("ec2_import_image ami_name", _imp(ami_name="ab"), ["ami_name 'ab'", "3-128 characters"]),
    "ami_name-long": ("ec2_import_image ami_name", _imp(ami_name="a" * 129), ["is not a valid AMI name", "3-128"]),
    "ami_name-chars": (
        "ec2_import_image ami_name",
        _imp(ami_name="web01:prod!"),
        ["ami_name 'web01:prod!' is not a valid AMI name", "( ) [ ] . / - ' @ _"],
    ),
    "ami_name-newline": (
        "ec2_import_image ami_name",
        _imp(ami_name="web01\n"),
        ["ami_name 'web01\\n' is not a valid AMI name"],
    ),
    "ami_name-shell": (
        "ec2_import_image ami_name",
        _imp(ami_name="web $(id)"),
        ["ami_name 'web $(id)' is not a valid AMI name"],
    ),
    # tags
    "tags-value-long": (
        "ec2_import_image tags",
        _imp(tags={"owner": "x" * 257}),
        ["the value of 'owner' is 257 characters; values may have up to 256", "Shorten or remove"],
    ),
    "tags-key-long": (
        "ec2_import_image tags",
        _imp(tags={"k" * 129: "v"}),
        ["is 129 characters; keys must be 1-128", "Shorten or remove"],
    ),
    "tags-too-many": (
        "ec2_import_image tags",
        _imp(tags=LONG_TAGS),
        ["51 tags (Name included) but EC2 allows 50 per resource: drop 1"],
    ),
    "tags-aws-prefix": (
        "ec2_import_image tags",
        _imp(tags={"AWS:owner": "me"}),
        ["tags: keys starting with aws: are reserved by AWS: AWS:owner"],
    ),
    "name-too-long": ("ec2_import_image name", _imp(name="n" * 257), ["name must be 1-256 characters"]),
    # licences and keys
    "license_type-with-usage_operation": (
        "ec2_import_image license_type, usage_operation",
        _imp(license_type="BYOL", usage_operation="RunInstances:0010"),
        ["mutually exclusive: license_type|usage_operation"],
    ),
    "license_type-aws-linux": (
        "ec2_import_image license_type",
        _imp(license_type="AWS", platform="Linux"),
        ["license_type AWS is not available for Linux images: use BYOL or leave it unset"],
    ),
    "kms_key_id-without-encrypted": (
        "ec2_import_image kms_key_id",
        _imp(kms_key_id="alias/migrations"),
        ["kms_key_id is set but encrypted is false: set encrypted: true"],
    ),
    "boot_mode-uefi-preferred": (
        "ec2_import_image boot_mode",
        _imp(boot_mode="uefi-preferred"),
        ["value of boot_mode must be one of: legacy-bios, uefi, got: uefi-preferred"],
    ),
    # OVAs that VM Import would reject
    "ova-not-an-ova-s3": (
        "ova_info src",
        _info("s3://%s/ovas/notova.ova" % BUCKET),
        ["s3://%s/ovas/notova.ova is not an OVA VM Import can use: not a tar archive" % BUCKET, "Export the VM again"],
    ),
    "ova-not-an-ova-file": (
        "ova_info src",
        _info("{notova}"),
        ["notova.ova is not an OVA VM Import can use: not a tar archive", "Export the VM again"],
    ),
    "ova-truncated-s3": (
        "ova_info src",
        _info("s3://%s/ovas/truncated.ova" % BUCKET),
        ["s3://%s/ovas/truncated.ova is not an OVA" % BUCKET, "runs past the end", "upload the whole file again"],
    ),
    "ova-truncated-file": (
        "ova_info src",
        _info("{truncated}"),
        ["truncated.ova is not an OVA", "runs past the end", "upload the whole file again"],
    ),
    "ova-vmdk-not-stream-optimized": (
        "ova_info src",
        _info("s3://%s/ovas/sparse.ova" % BUCKET),
        [
            "VM Import would reject s3://%s/ovas/sparse.ova" % BUCKET,
            "VMDK is not stream-optimized",
            "qemu-img convert -O vmdk -o subformat=streamOptimized",
        ],
    ),
}


def _fill(value, inputs):
    if isinstance(value, str):
        return value.format(**{k: v for k, v in inputs.items() if isinstance(v, Path)})
    if isinstance(value, dict):
        return {k: _fill(v, inputs) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def module_run(sim, aws, inputs):  # noqa: F811 - session fixture from conftest
    _prepare_aws(aws, inputs)
    before = _snapshot(sim, aws)
    tasks = []
    for row_id, (_where, task, _expected) in MODULE_ROWS.items():
        task = _fill(task, inputs)
        module, params = next(iter(task.items()))
        params = {k: v for k, v in params.items() if v is not None}
        tasks.append({"name": row_id, module: params, "ignore_errors": True})
    res = run_playbook(tasks, env=_env(sim, aws))
    assert res.data, res
    return res, before, _snapshot(sim, aws), _writes(aws)


@pytest.mark.parametrize("row_id", list(MODULE_ROWS))
def test_module_refuses_bad_input_and_does_nothing(module_run, inputs, row_id):
    res, before, after, writes = module_run
    _where, _task, expected = MODULE_ROWS[row_id]
    out = res.task(row_id)
    print("MSG", row_id, repr(out.get("msg")))
    assert out.get("failed") is True, out
    _assert_said(out["msg"], expected)
    assert out.get("changed") is not True, out
    # Nothing happened anywhere (shared by the whole run, so it holds for this row).
    assert writes == {}, writes
    assert after == before
    assert not inputs["pwned"].exists()


# ---------------------------------------------------------------------------------------------------------------
# Role level: playbooks/migrate.yml, one inventory host per row, all naming VM web01
# ---------------------------------------------------------------------------------------------------------------

ROLE_ROWS = {
    "role-bucket-name": ({"vm_to_ami_s3_bucket": "My_Bucket"}, ["'My_Bucket' is not a valid S3 bucket name"]),
    "role-bucket-other-region": (
        {"vm_to_ami_s3_bucket": FAR_BUCKET},
        ["S3 bucket %s (from s3_url) is in region %s but the import runs in us-east-1" % (FAR_BUCKET, FAR_REGION)],
    ),
    "role-bucket-missing": ({"vm_to_ami_s3_bucket": "no-such-bucket"}, ["S3 bucket no-such-bucket", "does not exist"]),
    "role-vm-unknown": ({"vm_name": "web-01"}, ["no VM named 'web-01': check the name"]),
    "role-vm-ambiguous": ({"vm_name": "twin"}, ["2 VMs are named 'twin'", "Set datacenter/folder"]),
    "role-ami-name": ({"vm_to_ami_ami_name": "web01 (prod)!"}, ["ami_name 'web01 (prod)!' is not a valid AMI name"]),
    "role-ami-name-long": ({"vm_to_ami_ami_name": "w" * 200}, ["is not a valid AMI name", "3-128 characters"]),
    "role-tags-value": ({"vm_to_ami_tags": {"note": "x" * 300}}, ["the value of 'note' is 300 characters"]),
    "role-tags-too-many": ({"vm_to_ami_tags": LONG_TAGS}, ["52 tags (Name included) but EC2 allows 50"]),
    "role-tags-aws": ({"vm_to_ami_tags": {"aws:cost": "1"}}, ["reserved by AWS: aws:cost"]),
    "role-kms-without-encrypted": (
        {"vm_to_ami_kms_key_id": "alias/migrations"},
        ["kms_key_id is set but encrypted is false"],
    ),
    "role-license-aws-linux": ({"vm_to_ami_license_type": "AWS"}, ["license_type AWS is not available for Linux"]),
    "role-boot-mode-uefi-bios-vm": (
        {"vm_to_ami_boot_mode": "uefi"},
        ["vm_to_ami_boot_mode is uefi but the VM's firmware is bios", "Set vm_to_ami_boot_mode to legacy-bios"],
    ),
    "role-boot-mode-bios-efi-vm": (
        {"vm_name": "efi01", "vm_to_ami_boot_mode": "legacy-bios"},
        ["vm_to_ami_boot_mode is legacy-bios but the VM's firmware is efi", "Set vm_to_ami_boot_mode to uefi"],
    ),
}


def _write_inventory(path, hosts, group_vars):
    """Settings shared by the rows go to group vars, so each host's own (bad) variable wins over them."""
    path.write_text(yaml.safe_dump({"all": {"children": {"vms": {"hosts": hosts, "vars": group_vars}}}}))
    return path


def _migrate(workdir, env, *args):
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), str(REPO / "playbooks" / "migrate.yml"), *args]
    full_env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORKS="4",
        **env,
    )
    return subprocess.run(cmd, cwd=workdir, env=full_env, capture_output=True, text=True, timeout=900, check=False)


def _host_failure(stdout, host):
    """The message of the role's 'Stop this VM's migration with the reason' task for `host`."""
    marker = re.compile(r"^fatal: \[%s( -> \S+)?\]: FAILED! => " % re.escape(host))
    found = [marker.sub("", line) for line in stdout.splitlines() if marker.match(line)]
    assert found, "no failure for %s in:\n%s" % (host, stdout[-6000:])
    return found[-1]


@pytest.fixture(scope="module")
def role_run(sim, aws, inputs, module_run, tmp_path_factory):  # noqa: F811
    """After module_run (same simulators): every role-level row as one host of one migrate.yml run."""
    _prepare_aws(aws, inputs)
    workdir = tmp_path_factory.mktemp("role-run")
    hosts = {}
    for row_id, (host_vars, _expected) in ROLE_ROWS.items():
        hosts[row_id] = dict({"vm_name": "web01"}, **host_vars)
    group_vars = {"esxi2ami_skip_guest_prepare": True, "vm_to_ami_s3_bucket": BUCKET}
    inventory = _write_inventory(workdir / "inventory.yml", hosts, group_vars)
    before = _snapshot(sim, aws)
    proc = _migrate(workdir, _env(sim, aws), "-i", str(inventory), "-e", "esxi2ami_hosts=vms")
    return proc, before, _snapshot(sim, aws), _writes(aws)


@pytest.mark.parametrize("row_id", list(ROLE_ROWS))
def test_role_refuses_bad_variables_before_touching_anything(role_run, inputs, row_id):
    proc, before, after, writes = role_run
    assert proc.returncode == 2, proc.stdout[-4000:] + proc.stderr
    print("MSG", row_id, _host_failure(proc.stdout, row_id))
    _assert_said(_host_failure(proc.stdout, row_id), ROLE_ROWS[row_id][1])
    recap = proc.stdout[proc.stdout.index("PLAY RECAP") :]
    (line,) = [x for x in recap.splitlines() if x.split(" ")[0] == row_id]
    assert "changed=0" in line and "failed=1" in line, line
    assert writes == {}, writes
    assert after == before
    assert not inputs["pwned"].exists()


# ---------------------------------------------------------------------------------------------------------------
# A disk the export cannot read: fails cleanly, nothing left, power state as asked
# ---------------------------------------------------------------------------------------------------------------


def test_unreadable_disk_fails_cleanly(sim, aws, inputs, module_run, role_run):  # noqa: F811
    _prepare_aws(aws, inputs)
    # The simulator serves this VM's disk from the file; without it the NFC download fails mid-export.
    moved = inputs["lost_vmdk"].with_suffix(".gone")
    shutil.move(str(inputs["lost_vmdk"]), str(moved))
    try:
        res = run_playbook(
            [
                {
                    "name": "restore",
                    EXPORT: dict(name="lost-disk", dest="s3://%s/exports/lost.ova" % BUCKET, restore_power_state=True),
                    "ignore_errors": True,
                },
            ],
            env=_env(sim, aws),
        )
    finally:
        shutil.move(str(moved), str(inputs["lost_vmdk"]))
    out = res.task("restore")
    assert out.get("failed") is True, out
    _assert_said(out["msg"], ["exporting VM name 'lost-disk' to s3://%s/exports/lost.ova failed" % BUCKET])
    _assert_said(out["msg"], ["Nothing was left behind at the destination", "the VM was left poweredOn"])
    s3 = aws.client("s3")
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="exports/")
    # restore_power_state=true: back on, which vSphere refuses while an export lease is open (so it was released).
    assert _vm_powers(sim)[next(k for k in _vm_powers(sim) if k.startswith("lost-disk "))] == "poweredOn"
    calls = aws.counters()["calls"]
    assert calls.get("s3:DELETE", 0) >= 1, calls  # AbortMultipartUpload


# ---------------------------------------------------------------------------------------------------------------
# Names with quotes, spaces, $() and newlines: passed as data, never to a shell
# ---------------------------------------------------------------------------------------------------------------


def test_shell_looking_names_export_and_import_as_plain_data(sim, aws, inputs, module_run, role_run):  # noqa: F811
    _prepare_aws(aws, inputs)
    name = _shell_name(inputs)
    key = 'exports/%s\'s "disk".ova' % name
    url = "s3://%s/%s" % (BUCKET, key)
    tags = {"owner": "ops; rm -rf / `id`", "note": "line one\nline two $(id)"}
    res = run_playbook(
        [
            {"name": "export", EXPORT: dict(name=name, dest=url, power_off="hard")},
            {"name": "inspect", INFO: dict(src=url, validate=True), "register": "ova"},
            {"name": "role", "esxi2ami.migrate.ec2_vmimport_role": dict(s3_locations=[BUCKET + "/exports/"])},
            {
                "name": "import",
                IMPORT: dict(name=name, s3_url=url, tags=tags, poll_interval=0.5, wait_timeout=300, progress_file=""),
            },
        ],
        env=_env(sim, aws),
    )
    assert res.rc == 0, res
    assert not inputs["pwned"].exists()
    s3 = aws.client("s3")
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] > 0
    imported = res.task("import")
    ec2 = aws.client("ec2")
    image = ec2.describe_images(ImageIds=[imported["image_id"]])["Images"][0]
    got = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert got == dict(tags, Name=name)


def test_shell_looking_vm_name_through_the_role(sim, aws, inputs, module_run, role_run, tmp_path):  # noqa: F811
    _prepare_aws(aws, inputs)
    name = _shell_name(inputs)
    inventory = _write_inventory(
        tmp_path / "inventory.yml", {"odd": {"vm_name": name}}, {"esxi2ami_skip_guest_prepare": True}
    )
    extra = tmp_path / "vars.yml"
    extra.write_text(
        yaml.safe_dump(
            {
                "esxi2ami_hosts": "vms",
                "vm_to_ami_s3_bucket": BUCKET,
                "vm_to_ami_power_off": "hard",
                "vm_to_ami_poll_interval": 1,
                "vm_to_ami_progress_interval": 2,
                "vm_to_ami_tags": {"quote": 'it\'s "quoted" $(id)'},
            }
        )
    )
    proc = _migrate(tmp_path, _env(sim, aws), "-i", str(inventory), "-e", "@%s" % extra)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
    assert not inputs["pwned"].exists()
    ec2 = aws.client("ec2")
    (image,) = ec2.describe_images(Owners=["self"])["Images"]
    got = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert got["Name"] == name and got["esxi2ami:source-vm"] == name and got["quote"] == 'it\'s "quoted" $(id)'


# ---------------------------------------------------------------------------------------------------------------
# guest_prepare: a login user that does not exist (one nspawn guest for both rows)
# ---------------------------------------------------------------------------------------------------------------

GUEST_WATCHED = ("etc", "boot", "usr/local", "var/lib/dpkg/status", "home")
# What the container or Ansible's own SSH login writes, whatever the role does.
GUEST_NOISE = re.compile(
    r"^(etc/(ld\.so\.cache|machine-id|mtab|resolv\.conf|\.pwd\.lock)|home/[^/]+/(\.ansible(/.*)?|\.sudo_as_admin_successful))$"
)


def _tree_state(tree):
    """Every watched file of the guest tree with its size and content hash, so any change shows."""
    out = {}
    for top in GUEST_WATCHED:
        base = Path(tree, top)
        for path in [base] if base.is_file() else sorted(base.rglob("*")):
            rel = str(path.relative_to(tree))
            if GUEST_NOISE.match(rel):
                continue
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


GUEST_ROWS = {
    "login-user-missing": "nobody-here",
    "login-user-shell": "a'b $(cd;touch %s) c" % PWNED.name,
}


@pytest.mark.parametrize("row_id", list(GUEST_ROWS))
def test_guest_prepare_refuses_a_missing_login_user_before_any_change(guest, row_id):  # noqa: F811
    user = GUEST_ROWS[row_id]
    before = _tree_state(guest.rootfs)
    res = run_playbook(
        [
            {
                "name": "prepare",
                "hosts": "guests",
                "become": True,
                "gather_facts": True,
                "roles": [{"role": "esxi2ami.migrate.guest_prepare"}],
            }
        ],
        inventory=guest.inventory,
        extra_vars={"guest_prepare_login_user": user, "guest_prepare_kernel_local_repo": "/srv/debs"},
    )
    assert res.rc == 2, res
    failed = [r for r in res.results("guest-fixture") if r.get("failed")]
    assert len(failed) == 1, failed
    _assert_said(
        failed[0]["msg"],
        [
            "The login user %s does not exist on this guest" % user,
            "set guest_prepare_login_user to an existing user, or guest_prepare_login_user_create=true",
        ],
    )
    assert not [r["_task"] for r in res.results("guest-fixture") if r.get("changed")]
    assert _tree_state(guest.rootfs) == before
    assert not (guest.rootfs / "root" / PWNED.name).exists() and not (guest.rootfs / "home/admin" / PWNED.name).exists()
    assert not PWNED.exists()
