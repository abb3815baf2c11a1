"""The OVA writer and reader on real tar streams, real OVF XML and real (qemu-img made) VMDKs."""

import hashlib
import io
import os
import shutil
import tarfile
import xml.etree.ElementTree as ET  # noqa: N817

import pytest

from ansible_collections.esxi2ami.migrate.plugins.module_utils import ova
from tests.simulators.vmimport.ova_builder import build_ova, make_raw_disk, make_vmdk, ovf_descriptor

needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed")


def _descriptor(disks, name="vm", os_type="debian12_64Guest"):
    return ovf_descriptor(disks, name=name, os_type=os_type)


def _write(path, disks, descriptor=None, reserve=8192, chunk=7000):
    """Write an OVA with OvaWriter + FileSink from (name, bytes) disks; returns the writer's result."""
    names = [d[0] for d in disks]
    head = ova.OvaWriter.head_size_for("vm.ovf", "vm.mf", names, reserve)
    sink = ova.FileSink(str(path), head)
    writer = ova.OvaWriter(sink, "vm.ovf", "vm.mf", names, reserve, mtime=1700000000)
    for name, data in disks:
        writer.begin_disk(name)
        for i in range(0, len(data), chunk):  # uneven chunks, like a network stream
            writer.write(data[i : i + chunk])
        writer.end_disk()
    if descriptor is None:
        descriptor = _descriptor([(n, len(d), 1 << 20) for n, d in disks])
    return writer.finish(descriptor)


def test_gnu_headers_with_base256_size_and_never_pax():
    small = ova.tar_header("a.vmdk", 1000)
    big = ova.tar_header("b.vmdk", 9 << 30)
    for buf in (small, big):
        assert len(buf) == 512
        assert buf[257:265] == b"ustar  \0"  # GNU magic
        assert buf[156:157] == b"0"  # regular file, not 'x' (PAX)
    assert big[124] & 0x80  # base-256 size field
    assert tarfile.TarInfo.frombuf(big, "utf-8", "strict").size == 9 << 30
    long_name = ova.tar_header("d" * 150 + ".vmdk", 10)
    assert len(long_name) == 1536 and long_name[156:157] == b"L"  # GNU long name, still no PAX


def test_written_ova_reads_back_with_tarfile(tmp_path):
    disks = [("vm-disk1.vmdk", os.urandom(20000)), ("vm-disk2.vmdk", b"\1" * 512), ("vm-disk3.vmdk", b"")]
    path = tmp_path / "vm.ova"
    result = _write(path, disks)
    assert not (tmp_path / "vm.ova.partial").exists()
    assert result["size"] == path.stat().st_size
    assert path.stat().st_size % 512 == 0
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["vm.ovf", "vm.mf"] + [d[0] for d in disks]
        for m, (name, data) in zip(members[2:], disks, strict=True):
            assert tar.extractfile(m).read() == data, name
            assert m.mtime == 1700000000
        descriptor = tar.extractfile("vm.ovf").read()
        ET.fromstring(descriptor)  # noqa: S314 - our own output; padding is trailing whitespace, still well-formed
        assert len(descriptor) == 8192
        manifest = tar.extractfile("vm.mf").read().decode()
    expected = ["SHA256(vm.ovf)= %s" % hashlib.sha256(descriptor).hexdigest()]
    expected += ["SHA256(%s)= %s" % (n, hashlib.sha256(d).hexdigest()) for n, d in disks]
    assert manifest.splitlines() == expected
    assert [d["sha256"] for d in result["disks"]] == [hashlib.sha256(d).hexdigest() for n, d in disks]


def test_descriptor_that_outgrows_its_slot_is_refused_and_nothing_gets_the_final_name(tmp_path):
    path = tmp_path / "vm.ova"
    with pytest.raises(ova.OvaError, match="does not fit the 512 bytes reserved"):
        _write(path, [("vm-disk1.vmdk", b"x")], descriptor="<x/>" + " " * 600, reserve=512)
    assert not path.exists()
    sink = ova.FileSink(str(path), 1024)
    sink.write(b"abc")
    sink.abort()
    assert not path.exists() and not (tmp_path / "vm.ova.partial").exists()


def test_disks_out_of_order_are_a_bug_not_a_broken_ova(tmp_path):
    sink = ova.FileSink(str(tmp_path / "x.ova"), 2048)
    writer = ova.OvaWriter(sink, "vm.ovf", "vm.mf", ["a.vmdk", "b.vmdk"], 512)
    with pytest.raises(ova.OvaError, match="out of order"):
        writer.begin_disk("b.vmdk")
    sink.abort()


def test_descriptor_with_sizes_sets_only_file_sizes():
    text = _descriptor([("vm-disk1.vmdk", 0, 1 << 20)])
    out = ova.descriptor_with_sizes(text, {"vm-disk1.vmdk": 123456})
    assert 'ovf:size="123456"' in out
    assert out.replace('ovf:size="123456"', 'ovf:size="0"') == text


def test_ovf_model_reads_vsphere_style_descriptor():
    text = _descriptor([("vm-disk1.vmdk", 10, 8 << 20), ("vm-disk2.vmdk", 20, 4 << 20)], name="web01")
    desc = ova.OvfDescriptor(text)
    assert desc.vm_name == "web01"
    assert desc.guest_os == "debian12_64Guest"
    assert desc.firmware == "bios" and desc.boot_mode == "legacy-bios"
    assert desc.architecture == "x86_64" and desc.platform == "Linux"
    assert [(d["href"], d["capacity"], d["file_size"]) for d in desc.disks] == [
        ("vm-disk1.vmdk", 8 << 20, 10),
        ("vm-disk2.vmdk", 4 << 20, 20),
    ]
    efi = text.replace(
        "</VirtualHardwareSection>",
        '<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/></VirtualHardwareSection>',
    )
    assert ova.OvfDescriptor(efi).boot_mode == "uefi"


def test_capacity_units():
    assert ova.capacity_bytes("8", "byte * 2^20") == 8 << 20
    assert ova.capacity_bytes("3", "byte * 2^10") == 3072
    assert ova.capacity_bytes("5", None) == 5
    with pytest.raises(ova.OvaError, match="capacityAllocationUnits"):
        ova.capacity_bytes("1", "furlongs")


def test_doctype_is_refused():
    with pytest.raises(ova.OvaError, match="DOCTYPE"):
        ova.OvfDescriptor('<!DOCTYPE x [<!ENTITY a "b">]><Envelope/>')


@needs_qemu
def test_inspect_a_good_ova(tmp_path):
    raw = make_raw_disk(tmp_path / "d.raw", size=2 << 20)
    vmdk = make_vmdk(raw, tmp_path / "vm-disk1.vmdk")
    data = vmdk.read_bytes()
    path = tmp_path / "good.ova"
    _write(path, [("vm-disk1.vmdk", data)], descriptor=_descriptor([("vm-disk1.vmdk", len(data), 2 << 20)]))
    read, size = ova.file_reader(str(path))
    facts = ova.inspect_ova(read, size, verify_manifest=True)
    assert facts["problems"] == []
    assert facts["manifest"]["verified"] and facts["manifest"]["mismatches"] == []
    assert facts["disks"][0]["stream_optimized"] and facts["disks"][0]["virtual_size"] == 2 << 20
    assert [m["header"] for m in facts["members"]] == ["gnu"] * 3


def _reads_counted(path):
    read, size = ova.file_reader(str(path))
    seen = []

    def counted(offset, length):
        seen.append(length)
        return read(offset, length)

    return counted, size, seen


@needs_qemu
def test_inspect_reads_only_headers_without_manifest_verification(tmp_path):
    raw = make_raw_disk(tmp_path / "d.raw", size=8 << 20, content=os.urandom(6 << 20))
    path = build_ova(tmp_path / "vm.ova", [raw])
    read, size, seen = _reads_counted(path)
    facts = ova.inspect_ova(read, size, verify_manifest=False)
    assert facts["problems"] == []
    assert sum(seen) < 200 << 10 < size  # tar headers, descriptor, manifest, VMDK header: not the disk


@needs_qemu
@pytest.mark.parametrize(
    "variant, reason",
    [
        ({"ovf_first": False}, "is not the first member"),
        ({"omit_disks": (0,)}, "referenced by the descriptor but not in the archive"),
        ({"subformat": "monolithicSparse"}, "is not stream-optimized"),
        ({"tar_format": tarfile.PAX_FORMAT}, "PAX extended headers"),
        ({"os_type": "solaris10_64Guest"}, "not a family VM Import supports"),
    ],
)
def test_inspect_names_what_vm_import_would_reject(tmp_path, variant, reason):
    raw = make_raw_disk(tmp_path / "d.raw", size=1 << 20)
    if variant.get("tar_format") == tarfile.PAX_FORMAT:
        # tarfile writes PAX headers only when it needs them: a non-ASCII name does it.
        path = build_ova(tmp_path / "vm.ova", [raw], name="vm\u00e9", **variant)
    else:
        path = build_ova(tmp_path / "vm.ova", [raw], **variant)
    read, size = ova.file_reader(str(path))
    facts = ova.inspect_ova(read, size, verify_manifest=True)
    assert any(reason in p for p in facts["problems"]), facts["problems"]


def test_inspect_too_many_and_too_large_disks(tmp_path):
    disks = [("vm-disk%d.vmdk" % i, b"KDMV") for i in range(22)]
    text = _descriptor([(n, len(d), 1 << 20) for n, d in disks])
    text = text.replace('ovf:capacity="1048576"', 'ovf:capacity="%d"' % (16 << 40), 1)
    path = tmp_path / "many.ova"
    _write(path, disks, descriptor=text, reserve=ova.round_up(len(text) + 1))
    read, size = ova.file_reader(str(path))
    problems = ova.inspect_ova(read, size)["problems"]
    assert any("22 disks: VM Import takes at most 21" in p for p in problems), problems
    assert any("under 16 TiB" in p for p in problems), problems
    assert any("no VMDK sparse extent header" in p for p in problems), problems


def test_manifest_mismatch_is_found(tmp_path):
    disks = [("vm-disk1.vmdk", b"a" * 1000)]
    path = tmp_path / "vm.ova"
    _write(path, disks)
    data = bytearray(path.read_bytes())
    pos = data.rfind(b"a" * 1000)
    data[pos] = ord("b")  # damage the disk after the manifest was written
    path.write_bytes(bytes(data))
    read, size = ova.file_reader(str(path))
    facts = ova.inspect_ova(read, size, verify_manifest=True)
    assert facts["manifest"]["mismatches"] == ["vm-disk1.vmdk"]
    assert any("does not match its content" in p for p in facts["problems"])


def test_reader_handles_a_member_over_8_gib_without_reading_it(tmp_path):
    """A sparse file: a GNU base-256 header for a 9 GiB member, then the end of the archive."""
    path = tmp_path / "huge.ova"
    with open(path, "wb") as f:
        f.write(ova.tar_header("huge.vmdk", 9 << 30))
        f.truncate(512 + (9 << 30) + 1024)
    read, size = ova.file_reader(str(path))
    reader = ova.OvaReader(read, size)
    assert [(m.name, m.size, m.format) for m in reader.members] == [("huge.vmdk", 9 << 30, "gnu")]


def test_not_a_tar_is_a_clear_error(tmp_path):
    path = tmp_path / "x.ova"
    path.write_bytes(b"PK\3\4 this is a zip file" + b"\0" * 600)
    read, size = ova.file_reader(str(path))
    with pytest.raises(ova.OvaError, match="not a tar archive"):
        ova.inspect_ova(read, size)


def test_truncated_archive_is_a_clear_error(tmp_path):
    path = tmp_path / "t.ova"
    _write(path, [("vm-disk1.vmdk", os.urandom(5000))])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    read, size = ova.file_reader(str(path))
    with pytest.raises(ova.OvaError, match="runs past the end"):
        ova.OvaReader(read, size)


def test_parse_manifest_rejects_garbage():
    assert ova.parse_manifest("SHA1(a.vmdk)= ABCDEF\n") == {"a.vmdk": ("SHA1", "abcdef")}
    with pytest.raises(ova.OvaError, match="manifest line not understood"):
        ova.parse_manifest("MD5 a.vmdk abc")


def test_safe_file_name():
    assert ova.safe_file_name("web 01/prod") == "web_01_prod"
    assert ova.safe_file_name("../..") == "vm"
    assert ova.safe_file_name("ok-name_1.2") == "ok-name_1.2"


def test_writer_and_tarfile_agree_on_bytes(tmp_path):
    """The head + tail layout is an ordinary GNU tar: tarfile writes the same members identically."""
    disks = [("vm-disk1.vmdk", os.urandom(3000))]
    path = tmp_path / "vm.ova"
    _write(path, disks)
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    assert buf.getvalue()[: path.stat().st_size] == path.read_bytes()


needs_fat_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-img", "sfdisk", "mkfs.fat", "mmd", "mcopy")),
    reason="needs qemu-img, sfdisk (util-linux), mkfs.fat (dosfstools) and mtools",
)
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def _efi_disk(tmp_path, name, loader=True, esp=True, fat="32"):
    """A GPT disk whose EFI system partition (FAT) has, or lacks, EFI/BOOT/BOOTX64.EFI; as a stream-optimized VMDK."""
    import subprocess  # noqa: PLC0415

    raw = tmp_path / (name + ".raw")
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
    # 48 MiB ESP: enough clusters for FAT32 with 512-byte clusters, and for FAT16 with 2 KiB ones.
    table = "label: gpt\nstart=2048, size=98304, type=%s\nstart=100352, type=%s\n" % (ESP if esp else LINUX, LINUX)
    subprocess.run(["sfdisk", "-q", str(raw)], input=table.encode(), check=True)
    per_cluster = "1" if fat == "32" else "4"
    subprocess.run(
        ["mkfs.fat", "-F", fat, "-s", per_cluster, "--offset", "2048", str(raw), "49152"],
        check=True,
        capture_output=True,
    )
    image = "%s@@1M" % raw
    subprocess.run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"], check=True)
    (tmp_path / "loader.efi").write_bytes(b"MZ" + os.urandom(3000))
    target = "::/EFI/BOOT/BOOTX64.EFI" if loader else "::/EFI/debian/grubx64.efi"
    subprocess.run(["mcopy", "-i", image, str(tmp_path / "loader.efi"), target], check=True)
    return make_vmdk(raw, tmp_path / (name + ".vmdk"))


def _efi_ova(tmp_path, vmdk):
    data = vmdk.read_bytes()
    text = _descriptor([("vm-disk1.vmdk", len(data), 64 << 20)]).replace(
        "</VirtualHardwareSection>",
        '<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/></VirtualHardwareSection>',
    )
    path = tmp_path / ("%s.ova" % vmdk.stem)
    _write(path, [("vm-disk1.vmdk", data)], descriptor=text)
    read, size = ova.file_reader(str(path))
    return ova.inspect_ova(read, size)


@needs_fat_tools
@pytest.mark.parametrize("fat", ["32", "16"])
def test_efi_with_the_fallback_loader_passes(tmp_path, fat):
    facts = _efi_ova(tmp_path, _efi_disk(tmp_path, "good", fat=fat))
    assert facts["boot_mode"] == "uefi" and facts["efi_fallback_loader"] is True
    assert facts["problems"] == []


@needs_fat_tools
def test_efi_without_the_fallback_loader_is_a_problem(tmp_path):
    facts = _efi_ova(tmp_path, _efi_disk(tmp_path, "noloader", loader=False))
    assert facts["efi_fallback_loader"] is False
    assert any("has no EFI/BOOT/BOOTX64.EFI" in p for p in facts["problems"]), facts["problems"]


@needs_fat_tools
def test_efi_without_an_esp_is_unknown_not_a_problem(tmp_path):
    facts = _efi_ova(tmp_path, _efi_disk(tmp_path, "noesp", esp=False))
    assert facts["efi_fallback_loader"] is None and facts["problems"] == []


@needs_fat_tools
def test_grain_directory_at_the_end_as_esxi_streams_it(tmp_path):
    """ESXi writes the grain directory after the grains (header gdOffset = -1) and a footer with the real one."""
    vmdk = _efi_disk(tmp_path, "streamed")
    data = bytearray(vmdk.read_bytes())
    footer = bytes(data[:512])
    data[56:64] = (0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")  # header gdOffset: at end
    marker = bytearray(512)
    marker[12:16] = (3).to_bytes(4, "little")  # footer marker
    data += bytes(marker) + footer + bytes(512)  # footer marker, footer, end-of-stream marker
    vmdk.write_bytes(bytes(data))
    read, size = ova.file_reader(str(vmdk))
    assert ova.efi_fallback_loader(read, size) is True
