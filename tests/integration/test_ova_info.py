"""ova_info through ansible-playbook on real OVAs, local and in the moto S3 server."""

import os
import tarfile

import pytest

from ansible_collections.esxi2ami.migrate.plugins.module_utils import ova
from ansible_collections.esxi2ami.migrate.plugins.modules.ova_info import s3_reader
from tests.integration.playbook import run_playbook
from tests.simulators.vmimport.ova_builder import build_ova, make_raw_disk

BUCKET = "ovas"
MODULE = "esxi2ami.migrate.ova_info"

BAD = {
    "ovf_last": ({"ovf_first": False}, "is not the first member"),
    "missing_disk": ({"omit_disks": (1,)}, "vm-disk2.vmdk' (vmdisk2) is referenced by the descriptor but not in"),
    "sparse": ({"subformat": "monolithicSparse"}, "VMDK is not stream-optimized"),
    "pax": ({"tar_format": tarfile.PAX_FORMAT, "name": "vm\u00e9"}, "PAX extended headers"),
    "solaris": ({"os_type": "solaris11_64Guest"}, "guest OS 'solaris11_64Guest' is not a family"),
}


@pytest.fixture(scope="module")
def ovas(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ovas")
    disks = [
        make_raw_disk(tmp / "d1.raw", size=8 << 20, content=os.urandom(6 << 20)),
        make_raw_disk(tmp / "d2.raw", size=2 << 20),
    ]
    (tmp / "good").mkdir()
    built = {"good": build_ova(tmp / "good" / "vm.ova", disks)}
    for name, (variant, _reason) in BAD.items():
        (tmp / name).mkdir()
        built[name] = build_ova(tmp / name / "vm.ova", disks, **variant)
    notar = tmp / "notar.ova"
    notar.write_bytes(b"not a tar archive at all" * 100)
    built["notar"] = notar
    return built


@pytest.fixture
def s3(aws_clean, ovas):  # noqa: F811 - pytest fixture
    client = aws_clean.client("s3")
    client.create_bucket(Bucket=BUCKET)
    for name, path in ovas.items():
        client.upload_file(str(path), BUCKET, "%s.ova" % name)
    return client


def _info(name, src, validate):
    return {"name": name, MODULE: {"src": src, "validate": validate}, "ignore_errors": True}


def test_good_ova_local_and_in_s3(aws_clean, s3, ovas):
    res = run_playbook(
        [_info("local", str(ovas["good"]), True), _info("s3", "s3://%s/good.ova" % BUCKET, True)],
        env=aws_clean.env,
        check=True,  # an info module runs the same in check mode
    )
    local, remote = res.task("local"), res.task("s3")
    for out in (local, remote):
        assert not out.get("failed"), out
        assert out["changed"] is False and out["problems"] == []
        assert [m["name"] for m in out["members"]] == ["vm.ovf", "vm.mf", "vm-disk1.vmdk", "vm-disk2.vmdk"]
        assert out["vm_name"] == "vm" and out["guest_os"] == "debian12_64Guest"
        assert (out["boot_mode"], out["architecture"], out["platform"], out["firmware"]) == (
            "legacy-bios",
            "x86_64",
            "Linux",
            "bios",
        )
        assert [(d["capacity"], d["stream_optimized"], d["format"]) for d in out["disks"]] == [
            (8 << 20, True, "vmdk"),
            (2 << 20, True, "vmdk"),
        ]
        assert out["size"] == ovas["good"].stat().st_size
    assert local["manifest"]["verified"] is True and local["manifest"]["mismatches"] == []
    assert remote["manifest"]["verified"] is False  # S3: ranged reads only, so no digests


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_ovas_fail_validation_with_the_reason(aws_clean, s3, ovas, name):
    reason = BAD[name][1]
    res = run_playbook(
        [
            _info("local", str(ovas[name]), True),
            _info("s3", "s3://%s/%s.ova" % (BUCKET, name), True),
            _info("report only", str(ovas[name]), False),
        ],
        env=aws_clean.env,
    )
    for task in ("local", "s3"):
        out = res.task(task)
        assert out["failed"] and "VM Import would reject" in out["msg"] and reason in out["msg"], out
        assert any(reason in p for p in out["problems"])
    report = res.task("report only")
    assert not report.get("failed") and any(reason in p for p in report["problems"])


def test_unreadable_sources(aws_clean, s3, ovas, tmp_path):
    res = run_playbook(
        [
            _info("notar", str(ovas["notar"]), True),
            _info("notar quiet", str(ovas["notar"]), False),
            _info("missing", str(tmp_path / "nope.ova"), False),
            _info("missing key", "s3://%s/nope.ova" % BUCKET, False),
            _info("bad url", "s3://just-a-bucket", False),
        ],
        env=aws_clean.env,
    )
    assert "not an OVA VM Import can use" in res.task("notar")["msg"]
    assert "not a tar archive" in res.task("notar quiet")["problems"][0]
    assert "cannot read" in res.task("missing")["msg"] and "No such file" in res.task("missing")["msg"]
    assert res.task("missing key")["failed"] and "s3://ovas/nope.ova" in res.task("missing key")["msg"]
    assert "must look like s3://bucket/key.ova" in res.task("bad url")["msg"]


def test_s3_reads_are_ranged_and_small(aws_clean, s3, ovas):
    read, size = s3_reader(s3, BUCKET, "good.ova")
    total = []

    def counted(offset, length):
        data = read(offset, length)
        total.append(len(data))
        return data

    facts = ova.inspect_ova(counted, size)
    assert facts["problems"] == []
    assert size > 1 << 20 and sum(total) < 160 << 10
