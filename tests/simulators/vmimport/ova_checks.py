"""Disk-container checks of the simulated VM Import service (plain Python, no moto).

Everything here works on a ``read(offset, length) -> bytes`` callable so that the
extension reads only the bytes it needs from an S3 object (tar headers, the OVF
descriptor, VMDK headers, the first MiB of each disk's data), never the whole file.

A failed check raises :class:`ImportFailure` carrying the exact ``StatusMessage``
the real service reports (``ClientError: ...``) and the stage at which the task
fails (``validating`` for format problems, ``converting`` for OS problems).
"""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from typing import Callable

Read = Callable[[int, int], bytes]

MIB = 1 << 20
SECTOR = 512
MAX_DISKS = 21
GD_AT_END = 0xFFFFFFFFFFFFFFFF
VMDK_MAGIC = b"KDMV"
FAIL_MARKER = b"VMIMPORT-FAIL:"

# VMDK sparse extent header flags
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17

MSG_UNSUPPORTED_OVA = "ClientError: Disk validation failed [Unsupported OVA format]"
MSG_UNSUPPORTED_VMDK = "ClientError: Disk validation failed [Unsupported VMDK File Format]"
MSG_UNKNOWN_OS = "ClientError: Unknown OS / Missing OS files."
MSG_NO_PARTITIONS = "ClientError: No valid partitions. Not a valid volume."
MSG_FOOTERS = "ClientError: Footers not identical"
MSG_INVALID_LENGTH = "ClientError: Uncompressed data has invalid length"
MSG_TOO_MANY_DISKS = f"ClientError: Disk validation failed [The number of disks exceeds the maximum of {MAX_DISKS}]"

# Guest OS families (VMware osType prefixes) the service cannot import.
UNSUPPORTED_OS_PREFIXES = (
    "other",  # otherGuest, otherGuest64 (not otherLinux*, handled below)
    "dos",
    "win31",
    "win95",
    "win98",
    "winme",
    "os2",
    "netware",
    "solaris",
    "freebsd",
    "darwin",
    "vmkernel",
    "eComStation",
    "openServer",
    "unixWare",
)

STAGE_VALIDATING = "validating"
STAGE_CONVERTING = "converting"


class ImportFailure(Exception):
    """A task failure: ``message`` is the task's final StatusMessage."""

    def __init__(self, message: str, stage: str = STAGE_VALIDATING):
        super().__init__(message)
        self.message = message
        self.stage = stage


@dataclass
class DiskInfo:
    """What the service learns about one disk."""

    name: str
    format: str  # as reported in SnapshotDetails: VMDK, RAW, VHD, VHDX
    file_size: int  # bytes of the disk file (DiskImageSize)
    capacity: int  # virtual size in bytes
    head: bytes = b""  # first MiB of the guest-visible data (may be shorter)


@dataclass
class ContainerInfo:
    disks: list[DiskInfo] = field(default_factory=list)
    os_type: str | None = None  # vmw:osType from the OVF, if any
    os_id: str | None = None  # ovf:id of OperatingSystemSection (CIM OS id)


# --------------------------------------------------------------------------- tar


@dataclass
class TarMember:
    name: str
    offset: int  # of the data
    size: int


def _tar_number(field_bytes: bytes) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # GNU base-256
        value = field_bytes[0] & 0x3F
        for b in field_bytes[1:]:
            value = (value << 8) | b
        return value
    text = field_bytes.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _tar_checksum_ok(header: bytes) -> bool:
    try:
        stored = _tar_number(header[148:156])
    except ValueError:
        return False
    computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
    return stored == computed


def list_tar(read: Read, size: int, limit: int = 10000) -> list[TarMember]:
    """List the members of a tar archive reading only its headers.

    Understands ustar, GNU (base-256 sizes, ``L`` long names) and pax (``x``)
    headers. Raises ImportFailure(Unsupported OVA format) on anything else.
    """
    members: list[TarMember] = []
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while offset + SECTOR <= size and len(members) < limit:
        header = read(offset, SECTOR)
        if len(header) < SECTOR:
            break
        if header == b"\0" * SECTOR:
            break
        if not _tar_checksum_ok(header):
            raise ImportFailure(MSG_UNSUPPORTED_OVA)
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if header[257:262] == b"ustar" else ""
        if prefix:
            name = f"{prefix}/{name}"
        msize = _tar_number(header[124:136])
        typeflag = header[156:157]
        data_offset = offset + SECTOR
        offset = data_offset + (msize + SECTOR - 1) // SECTOR * SECTOR
        if typeflag == b"L":
            long_name = read(data_offset, msize).split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        if typeflag in (b"x", b"g"):
            for rec in _pax_records(read(data_offset, msize)):
                if typeflag == b"x":
                    pax[rec[0]] = rec[1]
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if "path" in pax:
            name = pax["path"]
        if "size" in pax:
            msize = int(pax["size"])
            offset = data_offset + (msize + SECTOR - 1) // SECTOR * SECTOR
        pax = {}
        if typeflag in (b"0", b"\0", b"7"):
            members.append(TarMember(name=name, offset=data_offset, size=msize))
    return members


def _pax_records(data: bytes) -> list[tuple[str, str]]:
    out = []
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        record = data[space + 1 : pos + length - 1].decode("utf-8", "replace")
        if "=" in record:
            key, value = record.split("=", 1)
            out.append((key, value))
        pos += length
    return out


# --------------------------------------------------------------------------- OVF

OVF_NS_RE = re.compile(r"^\{[^}]*\}")


def _local(tag: str) -> str:
    return OVF_NS_RE.sub("", tag)


def _attr(elem: ET.Element, name: str) -> str | None:
    for key, value in elem.attrib.items():
        if _local(key) == name:
            return value
    return None


def parse_ovf(xml: bytes) -> tuple[dict[str, str], list[str], str | None, str | None]:
    """Return ({file id: href}, [disk file ids in DiskSection order], osType, os id)."""
    try:
        root = ET.fromstring(xml)  # noqa: S314 - test simulator; expat refuses external entities
    except ET.ParseError as exc:
        raise ImportFailure(MSG_UNSUPPORTED_OVA) from exc
    if _local(root.tag) != "Envelope":
        raise ImportFailure(MSG_UNSUPPORTED_OVA)
    files: dict[str, str] = {}
    disk_refs: list[str] = []
    os_type = None
    os_id = None
    for elem in root.iter():
        tag = _local(elem.tag)
        if tag == "File":
            fid = _attr(elem, "id")
            href = _attr(elem, "href")
            if fid and href:
                files[fid] = href
        elif tag == "Disk":
            ref = _attr(elem, "fileRef")
            if ref:
                disk_refs.append(ref)
        elif tag == "OperatingSystemSection" and os_type is None:
            os_type = _attr(elem, "osType")
            os_id = _attr(elem, "id")
    return files, disk_refs, os_type, os_id


def os_supported(os_type: str | None, platform: str | None) -> bool:
    """Decide from the OVF's vmw:osType whether the service recognises the OS."""
    if not os_type:
        return True  # no hint: the service inspects the disk (see the marker)
    lowered = os_type.lower()
    if lowered.startswith("windows") or lowered.startswith("win"):
        if lowered.startswith(("win31", "win95", "win98", "winme")):
            return False
        return (platform or "").lower() == "windows"
    if "linux" in lowered:  # otherLinux64Guest, other5xLinux64Guest, ...
        return True
    return not lowered.startswith(tuple(p.lower() for p in UNSUPPORTED_OS_PREFIXES))


# --------------------------------------------------------------------------- disks

_HEADER = struct.Struct("<4sIIQQQQIQQQBccccH")


def check_stream_vmdk(read: Read, base: int, size: int, name: str, in_ova: bool) -> DiskInfo:
    """Validate a stream-optimized VMDK stored at [base, base+size)."""
    unsupported = MSG_UNSUPPORTED_OVA if in_ova else MSG_UNSUPPORTED_VMDK
    if size < SECTOR:
        raise ImportFailure(unsupported)
    header = read(base, SECTOR)
    if header[:4] != VMDK_MAGIC:
        raise ImportFailure(unsupported)
    (
        _magic,
        _version,
        flags,
        capacity,
        grain_size,
        desc_offset,
        desc_size,
        _num_gtes,
        _rgd,
        gd_offset,
        overhead,
        _unclean,
        _c1,
        _c2,
        _c3,
        _c4,
        compress,
    ) = _HEADER.unpack_from(header, 0)
    if not flags & FLAG_COMPRESSED or compress != 1:
        raise ImportFailure(f"ClientError: File uses unsupported compression algorithm {compress}")
    if desc_offset == 0 or desc_size == 0 or desc_size > 2048:
        raise ImportFailure(unsupported)
    descriptor = read(base + desc_offset * SECTOR, desc_size * SECTOR).split(b"\0", 1)[0]
    match = re.search(rb'createType\s*=\s*"([^"]*)"', descriptor)
    if not match or match.group(1) != b"streamOptimized":
        raise ImportFailure(unsupported)
    if gd_offset == GD_AT_END:
        # VMware layout: ... footer marker, footer (a header copy), end-of-stream marker.
        if size < 3 * SECTOR:
            raise ImportFailure(MSG_FOOTERS)
        tail = read(base + size - 3 * SECTOR, 3 * SECTOR)
        footer = tail[SECTOR : 2 * SECTOR]
        eos = tail[2 * SECTOR :]
        if footer[:4] != VMDK_MAGIC or footer[8:40] != header[8:40] or eos[:16] != b"\0" * 16:
            raise ImportFailure(MSG_FOOTERS)
    head = _stream_head(read, base, size, overhead, grain_size)
    return DiskInfo(name=name, format="VMDK", file_size=size, capacity=capacity * SECTOR, head=head)


def _stream_head(read: Read, base: int, size: int, overhead: int, grain_size: int) -> bytes:
    """Decompress the grains covering the first MiB of guest data."""
    limit_sectors = MIB // SECTOR
    out = bytearray(MIB)
    got_any = False
    pos = overhead * SECTOR
    scanned = 0
    while pos + 12 <= size and scanned < 64:
        scanned += 1
        marker = read(base + pos, SECTOR)
        if len(marker) < 16:
            break
        lba, msize = struct.unpack_from("<QI", marker, 0)
        if msize == 0:
            mtype = struct.unpack_from("<I", marker, 12)[0]
            if mtype == 0:  # end of stream (or zero padding)
                break
            pos += SECTOR + lba * SECTOR
            continue
        if lba >= limit_sectors:
            break
        blob = marker[12:] if 12 + msize <= SECTOR else read(base + pos + 12, msize)
        try:
            data = zlib.decompress(blob[:msize])
        except zlib.error as exc:
            raise ImportFailure(MSG_INVALID_LENGTH) from exc
        if len(data) != grain_size * SECTOR:
            raise ImportFailure(MSG_INVALID_LENGTH)
        start = lba * SECTOR
        chunk = data[: max(0, MIB - start)]
        out[start : start + len(chunk)] = chunk
        got_any = True
        pos += (12 + msize + SECTOR - 1) // SECTOR * SECTOR
    return bytes(out) if got_any else b"\0" * MIB


def check_raw(read: Read, base: int, size: int, name: str) -> DiskInfo:
    return DiskInfo(name=name, format="RAW", file_size=size, capacity=size, head=read(base, min(size, MIB)))


def check_vhd(read: Read, base: int, size: int, name: str) -> DiskInfo:
    footer = read(base + size - SECTOR, SECTOR) if size >= SECTOR else b""
    if footer[:8] != b"conectix":
        footer = read(base, SECTOR)
        if footer[:8] != b"conectix":
            raise ImportFailure("ClientError: Disk validation failed [Unsupported VHD File Format]")
    capacity = struct.unpack_from(">Q", footer, 48)[0]
    disk_type = struct.unpack_from(">I", footer, 60)[0]
    head = read(base, min(size - SECTOR, MIB)) if disk_type == 2 else b""
    return DiskInfo(name=name, format="VHD", file_size=size, capacity=capacity, head=head)


def check_vhdx(read: Read, base: int, size: int, name: str) -> DiskInfo:
    if read(base, 8) != b"vhdxfile":
        raise ImportFailure("ClientError: Disk validation failed [Unsupported VHDX File Format]")
    return DiskInfo(name=name, format="VHDX", file_size=size, capacity=size, head=b"")


def check_disk(fmt: str, read: Read, base: int, size: int, name: str, in_ova: bool = False) -> DiskInfo:
    fmt = fmt.lower()
    if fmt == "vmdk":
        return check_stream_vmdk(read, base, size, name, in_ova)
    if fmt == "raw":
        return check_raw(read, base, size, name)
    if fmt == "vhd":
        return check_vhd(read, base, size, name)
    if fmt == "vhdx":
        return check_vhdx(read, base, size, name)
    raise ImportFailure(f"ClientError: Unsupported disk format {fmt}")


def inspect_ova(read: Read, size: int) -> ContainerInfo:
    members = list_tar(read, size)
    if not members or not members[0].name.lower().endswith(".ovf"):
        raise ImportFailure(MSG_UNSUPPORTED_OVA)
    ovf = members[0]
    if ovf.size > 16 * MIB:
        raise ImportFailure(MSG_UNSUPPORTED_OVA)
    files, disk_refs, os_type, os_id = parse_ovf(read(ovf.offset, ovf.size))
    by_name = {m.name.split("/")[-1]: m for m in members[1:]}
    refs = disk_refs or list(files)
    if not refs:
        raise ImportFailure(MSG_UNSUPPORTED_OVA)
    if len(refs) > MAX_DISKS:
        raise ImportFailure(MSG_TOO_MANY_DISKS)
    info = ContainerInfo(os_type=os_type, os_id=os_id)
    for ref in refs:
        href = files.get(ref)
        if href is None:
            raise ImportFailure(MSG_UNSUPPORTED_OVA)
        member = by_name.get(href.split("/")[-1])
        if member is None:
            raise ImportFailure(MSG_UNSUPPORTED_OVA)
        info.disks.append(check_stream_vmdk(read, member.offset, member.size, member.name, in_ova=True))
    return info


def inspect_container(fmt: str, read: Read, size: int, name: str) -> ContainerInfo:
    """Validate one disk container (an OVA or a single disk)."""
    if fmt.lower() == "ova":
        return inspect_ova(read, size)
    return ContainerInfo(disks=[check_disk(fmt, read, 0, size, name)])


def find_fail_marker(head: bytes) -> str | None:
    """Return the message of a ``VMIMPORT-FAIL:<message>`` marker, if the data holds one."""
    idx = head.find(FAIL_MARKER)
    if idx < 0:
        return None
    raw = head[idx + len(FAIL_MARKER) : idx + len(FAIL_MARKER) + 256]
    raw = re.split(rb"[\0\r\n]", raw, maxsplit=1)[0]
    return raw.decode("utf-8", "replace").strip() or "Unknown OS / Missing OS files."


def check_guest(containers: list[ContainerInfo], platform: str | None) -> None:
    """OS-level checks, run after the disks were validated (stage 'converting')."""
    disks = [d for c in containers for d in c.disks]
    for disk in disks:
        message = find_fail_marker(disk.head)
        if message is not None:
            if not message.startswith("ClientError:"):
                message = f"ClientError: {message}"
            raise ImportFailure(message, STAGE_CONVERTING)
    for container in containers:
        if not os_supported(container.os_type, platform):
            raise ImportFailure(MSG_UNKNOWN_OS, STAGE_CONVERTING)
    boot = disks[0] if disks else None
    if boot is not None and len(boot.head) >= SECTOR and boot.head[510:512] != b"\x55\xaa":
        raise ImportFailure(MSG_NO_PARTITIONS, STAGE_CONVERTING)
