"""Build real OVAs for tests: a tar with the OVF first and stream-optimized VMDKs.

The VMDKs are made with ``qemu-img convert -O vmdk -o subformat=streamOptimized`` from
small raw files, exactly like the real pipeline. Knobs produce the broken variants the
simulated VM Import service must reject.

    from tests.simulators.vmimport.ova_builder import build_ova, make_raw_disk

    raw = make_raw_disk(tmp_path / "disk0.raw", size=4 << 20)            # MBR-signed, 4 MiB
    ova = build_ova(tmp_path / "vm.ova", [raw], os_type="debian12_64Guest")
    ova_bytes = ova.read_bytes()

Needs ``qemu-img`` (Debian package qemu-utils).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

MIB = 1 << 20
FAIL_MARKER = b"VMIMPORT-FAIL:"


def make_raw_disk(
    path: str | os.PathLike,
    size: int = 4 * MIB,
    *,
    mbr: bool = True,
    fail_message: str | None = None,
    content: bytes = b"",
) -> Path:
    """A sparse raw disk of ``size`` bytes.

    ``mbr``: write a minimal MBR (one Linux partition, signature 0x55AA) so the
    service finds a partition table. ``fail_message``: put ``VMIMPORT-FAIL:<message>``
    at offset 64 KiB so the simulated service fails the task with
    ``ClientError: <message>``. ``content`` is written at offset 1 MiB + 4 KiB
    (beyond what the service inspects) to make disks differ.
    """
    path = Path(path)
    with open(path, "wb") as handle:
        handle.truncate(size)
        if mbr:
            handle.seek(0)
            handle.write(_mbr(size))
        if fail_message is not None:
            handle.seek(64 * 1024)
            handle.write(FAIL_MARKER + fail_message.encode() + b"\0")
        if content:
            handle.seek(MIB + 4096)
            handle.write(content)
    return path


def _mbr(size: int) -> bytes:
    sector = bytearray(512)
    start = 2048
    count = max(1, size // 512 - start)
    entry = bytearray(16)
    entry[0] = 0x80
    entry[4] = 0x83  # Linux
    entry[8:12] = start.to_bytes(4, "little")
    entry[12:16] = count.to_bytes(4, "little")
    sector[446:462] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def qemu_img() -> str:
    found = shutil.which("qemu-img")
    if not found:
        raise RuntimeError("qemu-img not found: install the Debian package qemu-utils")
    return found


def make_vmdk(raw_path: str | os.PathLike, vmdk_path: str | os.PathLike, subformat: str = "streamOptimized") -> Path:
    """Convert a raw disk to VMDK (``subformat`` e.g. streamOptimized, monolithicSparse)."""
    vmdk_path = Path(vmdk_path)
    subprocess.run(
        [
            qemu_img(),
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            f"subformat={subformat}",
            str(raw_path),
            str(vmdk_path),
        ],
        check=True,
    )
    return vmdk_path


def ovf_descriptor(disks: list[tuple[str, int, int]], *, name: str = "vm", os_type: str = "debian12_64Guest") -> str:
    """An OVF 1.0 descriptor like vSphere's for ``disks`` = [(file name, file size, capacity bytes)]."""
    refs = "\n".join(
        f'    <File ovf:href={quoteattr(fname)} ovf:id="file{i + 1}" ovf:size="{fsize}"/>'
        for i, (fname, fsize, _cap) in enumerate(disks)
    )
    disk_items = "\n".join(
        f'    <Disk ovf:capacity="{cap}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk{i + 1}" '
        f'ovf:fileRef="file{i + 1}" '
        'ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>'
        for i, (_f, _s, cap) in enumerate(disks)
    )
    hw_disks = "\n".join(
        f"""      <Item>
        <rasd:AddressOnParent>{i}</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk {i + 1}</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk{i + 1}</rasd:HostResource>
        <rasd:InstanceID>{10 + i}</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>"""
        for i in range(len(disks))
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-20000000" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
{refs}
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{disk_items}
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id={quoteattr(name)}>
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType={quoteattr(os_type)}>
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>2048MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
{hw_disks}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def build_ova(
    path: str | os.PathLike,
    disks: list[str | os.PathLike],
    *,
    name: str = "vm",
    os_type: str = "debian12_64Guest",
    subformat: str = "streamOptimized",
    ovf_first: bool = True,
    manifest: bool = True,
    omit_disks: tuple[int, ...] = (),
    disks_are_vmdk: bool = False,
    tar_format: int = tarfile.GNU_FORMAT,
) -> Path:
    """Write an OVA at ``path`` from raw disk files (or VMDKs with ``disks_are_vmdk``).

    Member order like vSphere's: ``<name>.ovf``, ``<name>.mf``, then
    ``<name>-disk<N>.vmdk``. Broken variants: ``ovf_first=False`` puts the OVF last,
    ``omit_disks`` leaves out the disks with those indexes (the OVF still
    references them), ``subformat`` other than streamOptimized (e.g.
    ``monolithicSparse``) makes non-stream VMDKs.
    """
    path = Path(path)
    workdir = path.parent
    vmdks: list[Path] = []
    for index, disk in enumerate(disks):
        if disks_are_vmdk:
            vmdks.append(Path(disk))
        else:
            vmdks.append(make_vmdk(disk, workdir / f"{name}-disk{index + 1}.vmdk", subformat=subformat))
    entries = []
    for index, (raw, vmdk) in enumerate(zip(disks, vmdks, strict=True)):
        capacity = os.path.getsize(raw) if not disks_are_vmdk else _vmdk_capacity(vmdk)
        entries.append((f"{name}-disk{index + 1}.vmdk", os.path.getsize(vmdk), capacity))
    ovf = ovf_descriptor(entries, name=name, os_type=os_type).encode()
    members: list[tuple[str, bytes | Path]] = [(f"{name}.ovf", ovf)]
    if manifest:
        lines = [f"SHA256({name}.ovf)= {hashlib.sha256(ovf).hexdigest()}"]
        for (fname, _s, _c), vmdk in zip(entries, vmdks, strict=True):
            lines.append(f"SHA256({fname})= {_sha256_file(vmdk)}")
        members.append((f"{name}.mf", ("\n".join(lines) + "\n").encode()))
    for index, ((fname, _s, _c), vmdk) in enumerate(zip(entries, vmdks, strict=True)):
        if index not in omit_disks:
            members.append((fname, vmdk))
    if not ovf_first:
        members.append(members.pop(0))
    with tarfile.open(path, "w", format=tar_format) as tar:
        for member_name, data in members:
            if isinstance(data, Path):
                info = tar.gettarinfo(str(data), arcname=member_name)
                info.uid = info.gid = 64
                info.uname = info.gname = "someone"
                with open(data, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                info = tarfile.TarInfo(member_name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _vmdk_capacity(vmdk: Path) -> int:
    import struct

    with open(vmdk, "rb") as handle:
        header = handle.read(512)
    if header[:4] == b"KDMV":
        return struct.unpack_from("<Q", header, 12)[0] * 512
    return os.path.getsize(vmdk)
