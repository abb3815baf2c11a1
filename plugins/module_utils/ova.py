# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PRIVATE: OVA writing and reading for esxi2ami.migrate (no Ansible imports).

Writing: an OVA is a tar archive whose first member is the OVF descriptor, then the manifest,
then the disks. The disks' sizes (and so their tar headers, the descriptor and the manifest) are
only known once each disk has been streamed, so the writer keeps the *head* (descriptor and
manifest members) out of the byte stream until the end, and patches each disk's tar header once
the disk ends. Sinks implement the byte positions:

* ``FileSink`` writes a local file, patching headers in place (pwrite), the head last.
* ``s3_stream.MultipartSink`` uploads multipart parts; a part that holds a header still to be
  patched waits in memory, part 1 (head + first part of the tail) is uploaded last.

Both produce the same bytes. The descriptor slot has a fixed size reserved before the disks are
streamed (``descriptor_reserve``); the final descriptor is padded with trailing whitespace (legal
after the XML root element) to fill it, so no disk byte ever has to move.

Reading: ``OvaReader`` walks tar headers through a ``read(offset, length)`` callable (a local file
or ranged S3 GETs), so it never needs the whole archive; ``inspect_ova`` reports the facts
ec2_import_image needs and the reasons VM Import would reject the OVA.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import re
import struct
import tarfile
import uuid
import xml.etree.ElementTree as ET  # noqa: N817 - the usual name
import zlib

BLOCK = 512
EOF_BLOCKS = b"\0" * (2 * BLOCK)
GNU_SIZE_LIMIT = 8 << 30  # members this large need GNU base-256 size fields (ustar tops out at 8 GiB - 1)
MAX_DISKS = 21
MAX_DISK_CAPACITY = 16 << 40  # VM Import: each volume under 16 TiB
MAX_TEXT_MEMBER = 16 << 20  # descriptor and manifest are read whole: refuse absurd sizes

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VMW_NS = "http://www.vmware.com/schema/ovf"
STREAM_OPTIMIZED_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"

# VMDK sparse extent header (VMware "Virtual Disk Format 5.0", little endian).
VMDK_MAGIC = b"KDMV"
VMDK_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
VMDK_FLAG_COMPRESSED = 1 << 16
VMDK_FLAG_MARKERS = 1 << 17
VMDK_COMPRESSION_DEFLATE = 1

# Guest OS families (VMware guestId prefixes) VM Import cannot import.
UNSUPPORTED_GUEST_PREFIXES = (
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
    "ecomstation",
    "openserver",
    "unixware",
)

_CAPACITY_UNITS = re.compile(r"^\s*byte\s*(?:\*\s*(\d+)\s*\^\s*(\d+))?\s*$")


class OvaError(Exception):
    """A malformed OVA, or a writer used out of order. The message is meant for the user."""


def round_up(n, block=BLOCK):
    return -(-n // block) * block


def pad_len(n, block=BLOCK):
    return round_up(n, block) - n


def safe_file_name(name):
    """A member name from a VM name: no path separators, no spaces, no shell or XML specials."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "vm"
    return cleaned[:80]


def tar_header(name, size, mtime=0):
    """GNU tar header bytes for a regular file (base-256 size for >= 8 GiB, GNU long names, never PAX)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")


def manifest_line(name, sha256_hex):
    return "SHA256(%s)= %s\n" % (name, sha256_hex)


def manifest_size(names):
    """The manifest's length depends only on the member names (SHA-256 digests have a fixed length)."""
    return sum(len(manifest_line(n, "0" * 64).encode("utf-8")) for n in names)


# -- writing -------------------------------------------------------------------------------------


class FileSink:
    """Write an OVA to a local file: the tail sequentially after a hole for the head, headers patched in place.

    Written to ``<path>.partial`` and renamed over ``path`` on finish, so a failure never leaves a
    truncated OVA under the final name.
    """

    def __init__(self, path, head_size):
        self.path = path
        self.tmp_path = "%s.partial" % path
        self.head_size = head_size
        self.bytes_written = 0
        self._tail = 0
        self._fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.lseek(self._fd, head_size, os.SEEK_SET)

    @property
    def tail_size(self):
        return self._tail

    def write(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._tail += n
            self.bytes_written += n

    def hold(self, offset, length):
        """Nothing to do: a file can be patched anywhere."""

    def patch(self, offset, data):
        os.pwrite(self._fd, data, self.head_size + offset)
        self.bytes_written += len(data)

    def finish(self, head):
        if len(head) != self.head_size:
            raise OvaError("internal error: head is %d bytes, %d were reserved" % (len(head), self.head_size))
        os.pwrite(self._fd, head, 0)
        self.bytes_written += len(head)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        os.replace(self.tmp_path, self.path)
        return {"size": self.head_size + self._tail}

    def abort(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if os.path.exists(self.tmp_path):
            os.unlink(self.tmp_path)


class DiskResult:
    def __init__(self, name, size, sha256):
        self.name = name
        self.size = size
        self.sha256 = sha256

    def as_dict(self):
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


class OvaWriter:
    """Stream an OVA into a sink: ``begin_disk``/``write``/``end_disk`` per disk, then ``finish(descriptor)``.

    The tail (what follows the head) is: for each disk its GNU tar header, its data, padding; then
    the end-of-archive blocks. The head is the descriptor member (its data padded to exactly
    ``descriptor_reserve`` bytes) and the manifest member.
    """

    def __init__(self, sink, ovf_name, mf_name, disk_names, descriptor_reserve, mtime=0):
        if descriptor_reserve % BLOCK:
            raise OvaError("descriptor_reserve must be a multiple of %d" % BLOCK)
        self.sink = sink
        self.ovf_name = ovf_name
        self.mf_name = mf_name
        self.disk_names = list(disk_names)
        self.descriptor_reserve = descriptor_reserve
        self.mtime = int(mtime)
        self.disks = []
        self._current = None
        self._finished = False

    @staticmethod
    def head_size_for(ovf_name, mf_name, disk_names, descriptor_reserve):
        mf = manifest_size([ovf_name] + list(disk_names))
        return (
            len(tar_header(ovf_name, descriptor_reserve))
            + descriptor_reserve
            + len(tar_header(mf_name, mf))
            + round_up(mf)
        )

    @property
    def head_size(self):
        return self.head_size_for(self.ovf_name, self.mf_name, self.disk_names, self.descriptor_reserve)

    @property
    def bytes_streamed(self):
        """Disk bytes taken so far (for progress)."""
        done = sum(d.size for d in self.disks)
        return done + (self._current["size"] if self._current else 0)

    def begin_disk(self, name):
        if self._current is not None or self._finished:
            raise OvaError("internal error: begin_disk(%r) while a disk is open or after finish" % name)
        expected = self.disk_names[len(self.disks)] if len(self.disks) < len(self.disk_names) else None
        if name != expected:
            raise OvaError("internal error: disk %r written out of order (expected %r)" % (name, expected))
        placeholder = tar_header(name, 0, self.mtime)
        offset = self.sink.tail_size
        self.sink.hold(offset, len(placeholder))
        self.sink.write(placeholder)
        self._current = {"name": name, "offset": offset, "size": 0, "sha": hashlib.sha256()}

    def write(self, data):
        cur = self._current
        cur["sha"].update(data)
        cur["size"] += len(data)
        self.sink.write(data)

    def end_disk(self):
        cur = self._current
        self.sink.write(b"\0" * pad_len(cur["size"]))
        self.sink.patch(cur["offset"], tar_header(cur["name"], cur["size"], self.mtime))
        result = DiskResult(cur["name"], cur["size"], cur["sha"].hexdigest())
        self.disks.append(result)
        self._current = None
        return result

    def build_head(self, descriptor):
        """The descriptor member (padded to the reserved slot) and the manifest member, as bytes."""
        if isinstance(descriptor, str):
            descriptor = descriptor.encode("utf-8")
        if len(descriptor) > self.descriptor_reserve:
            raise OvaError(
                "the OVF descriptor (%d bytes) does not fit the %d bytes reserved for it"
                % (len(descriptor), self.descriptor_reserve)
            )
        # Whitespace after the root element is legal XML; it keeps every disk byte where it already is.
        descriptor = descriptor + b" " * (self.descriptor_reserve - len(descriptor) - 1) + b"\n"
        lines = [manifest_line(self.ovf_name, hashlib.sha256(descriptor).hexdigest())]
        lines += [manifest_line(d.name, d.sha256) for d in self.disks]
        manifest = "".join(lines).encode("utf-8")
        head = (
            tar_header(self.ovf_name, len(descriptor), self.mtime)
            + descriptor
            + tar_header(self.mf_name, len(manifest), self.mtime)
            + manifest
            + b"\0" * pad_len(len(manifest))
        )
        if len(head) != self.head_size:
            raise OvaError("internal error: head is %d bytes, expected %d" % (len(head), self.head_size))
        return head, descriptor, manifest

    def finish(self, descriptor):
        """Write the end of the archive and the head; returns the sink's result plus size and disks."""
        if self._current is not None or len(self.disks) != len(self.disk_names):
            raise OvaError("internal error: finish() before every disk was written")
        head, descriptor, manifest = self.build_head(descriptor)
        self.sink.write(EOF_BLOCKS)
        result = dict(self.sink.finish(head) or {})
        self._finished = True
        result["size"] = len(head) + self.sink.tail_size
        result["disks"] = [d.as_dict() for d in self.disks]
        result["descriptor_sha256"] = hashlib.sha256(descriptor).hexdigest()
        return result


def descriptor_with_sizes(descriptor, sizes):
    """Set ``ovf:size`` of each File in References (sizes: href -> bytes); the rest of the text is untouched."""

    def repl(match):
        tag = match.group(0)
        href = re.search(r'ovf:href="([^"]*)"', tag)
        if not href or href.group(1) not in sizes:
            return tag
        size = sizes[href.group(1)]
        if re.search(r'ovf:size="[^"]*"', tag):
            return re.sub(r'ovf:size="[^"]*"', 'ovf:size="%d"' % size, tag)
        return tag.replace("<File ", '<File ovf:size="%d" ' % size, 1)

    return re.sub(r"<File\b[^>]*>", repl, descriptor)


# -- OVF descriptor model ------------------------------------------------------------------------


def _q(ns, tag):
    return "{%s}%s" % (ns, tag)


def _attr(elem, name, ns=OVF_NS):
    value = elem.get(_q(ns, name))
    if value is None:
        value = elem.get(name)
    return value


def capacity_bytes(capacity, units):
    """OVF capacity with ``capacityAllocationUnits`` like ``byte * 2^20`` to bytes."""
    value = int(capacity)
    if not units:
        return value
    match = _CAPACITY_UNITS.match(units)
    if not match:
        raise OvaError("unsupported capacityAllocationUnits %r" % units)
    if match.group(1):
        value *= int(match.group(1)) ** int(match.group(2))
    return value


class OvfDescriptor:
    """What the OVF descriptor says about the VM: files, disks, guest OS, firmware."""

    def __init__(self, text):
        probe = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        if b"<!DOCTYPE" in probe or b"<!ENTITY" in probe:
            # OVF has no use for DTDs; refusing them rules out entity expansion attacks.
            raise OvaError("the OVF descriptor contains a DOCTYPE or ENTITY declaration, which OVF does not use")
        try:
            self.root = ET.fromstring(text)  # noqa: S314 - DTDs refused above; ElementTree resolves no external entities
        except ET.ParseError as exc:
            raise OvaError("the OVF descriptor is not well-formed XML: %s" % exc) from None
        if self.root.tag != _q(OVF_NS, "Envelope"):
            raise OvaError("the OVF descriptor's root element is %s, not an OVF 1.x Envelope" % self.root.tag)
        self.files = {}
        refs = self.root.find(_q(OVF_NS, "References"))
        for f in refs.findall(_q(OVF_NS, "File")) if refs is not None else []:
            size = _attr(f, "size")
            self.files[_attr(f, "id")] = {"href": _attr(f, "href"), "size": int(size) if size else None}
        self.disks = []
        section = self.root.find(_q(OVF_NS, "DiskSection"))
        for d in section.findall(_q(OVF_NS, "Disk")) if section is not None else []:
            file_ref = _attr(d, "fileRef")
            ref = self.files.get(file_ref, {})
            self.disks.append(
                {
                    "disk_id": _attr(d, "diskId"),
                    "file_ref": file_ref,
                    "href": ref.get("href"),
                    "file_size": ref.get("size"),
                    "capacity": capacity_bytes(_attr(d, "capacity") or 0, _attr(d, "capacityAllocationUnits")),
                    "format": _attr(d, "format") or "",
                }
            )
        vs = self.root.find(_q(OVF_NS, "VirtualSystem"))
        if vs is None:
            vs = self.root.find(".//" + _q(OVF_NS, "VirtualSystem"))
        self.vm_name = None
        self.guest_os = None
        self.firmware = "bios"
        if vs is not None:
            name = vs.find(_q(OVF_NS, "Name"))
            self.vm_name = name.text if name is not None and name.text else _attr(vs, "id")
            os_section = vs.find(_q(OVF_NS, "OperatingSystemSection"))
            if os_section is not None:
                self.guest_os = os_section.get(_q(VMW_NS, "osType")) or None
                if not self.guest_os:
                    desc = os_section.find(_q(OVF_NS, "Description"))
                    self.guest_os = desc.text if desc is not None else None
            for cfg in vs.iter(_q(VMW_NS, "Config")):
                if cfg.get(_q(VMW_NS, "key")) == "firmware":
                    self.firmware = (cfg.get(_q(VMW_NS, "value")) or "bios").lower()

    @property
    def boot_mode(self):
        return "uefi" if self.firmware == "efi" else "legacy-bios"

    @property
    def architecture(self):
        guest = (self.guest_os or "").lower()
        if "arm" in guest:
            return "arm64"
        if "64" in guest:
            return "x86_64"
        return "i386" if guest else "x86_64"

    @property
    def platform(self):
        return "Windows" if (self.guest_os or "").lower().startswith("win") else "Linux"

    def guest_os_problem(self):
        guest = (self.guest_os or "").lower()
        if not guest:
            return None
        if guest.startswith(UNSUPPORTED_GUEST_PREFIXES) or guest in ("otherguest", "otherguest64"):
            return "guest OS %r is not a family VM Import supports (Linux or Windows)" % self.guest_os
        return None


# -- reading -------------------------------------------------------------------------------------


def file_reader(path):
    """A ``read(offset, length)`` callable over a local file, and its size."""
    size = os.path.getsize(path)

    def read(offset, length):
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    return read, size


def parse_vmdk_header(data):
    """Facts from a VMDK's first sector (and the embedded descriptor if ``data`` includes it)."""
    if len(data) < VMDK_HEADER.size or data[:4] != VMDK_MAGIC:
        return {"format": "unknown", "stream_optimized": False, "reason": "no VMDK sparse extent header (KDMV)"}
    fields = VMDK_HEADER.unpack_from(data)
    version, flags, capacity, compress = fields[1], fields[2], fields[3], fields[13]
    desc_offset, desc_size = fields[5], fields[6]
    create_type = None
    if desc_offset and len(data) >= (desc_offset + 1) * BLOCK:
        text = data[desc_offset * BLOCK : (desc_offset + desc_size) * BLOCK].split(b"\0", 1)[0].decode("latin-1")
        match = re.search(r'createType\s*=\s*"([^"]+)"', text)
        create_type = match.group(1) if match else None
    stream = bool(flags & VMDK_FLAG_COMPRESSED and flags & VMDK_FLAG_MARKERS and compress == VMDK_COMPRESSION_DEFLATE)
    if create_type is not None:
        stream = stream and create_type == "streamOptimized"
    reason = None
    if not stream:
        reason = "VMDK is not stream-optimized (version %d, flags %#x, compression %d, createType %s)" % (
            version,
            flags,
            compress,
            create_type,
        )
    return {
        "format": "vmdk",
        "version": version,
        "stream_optimized": stream,
        "create_type": create_type,
        "virtual_size": capacity * BLOCK,
        "reason": reason,
    }


GD_AT_END = 0xFFFFFFFFFFFFFFFF
ESP_TYPE_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
FALLBACK_LOADERS = {"x86_64": "BOOTX64.EFI", "i386": "BOOTIA32.EFI", "arm64": "BOOTAA64.EFI"}


class StreamVmdk:
    """Sector reads of the virtual disk inside a stream-optimized VMDK, through ``read(offset, length)``.

    Only the grain directory, the grain tables needed and the grains asked for are read (and inflated),
    so looking at a partition table or a small file system costs a few ranged reads.
    """

    def __init__(self, read, size):
        self._read = read
        header = read(0, BLOCK)
        if len(header) < VMDK_HEADER.size or header[:4] != VMDK_MAGIC:
            raise OvaError("not a VMDK sparse extent")
        fields = VMDK_HEADER.unpack_from(header)
        self.capacity = fields[3]
        self.grain = fields[4]
        self.gtes = fields[7] or 512
        gd_offset = fields[9]
        if gd_offset == GD_AT_END:  # streamed: the footer, just before the end-of-stream marker, has it
            footer = read(size - 2 * BLOCK, BLOCK)
            if footer[:4] != VMDK_MAGIC:
                raise OvaError("stream-optimized VMDK without a footer")
            gd_offset = VMDK_HEADER.unpack_from(footer)[9]
        tables = -(-self.capacity // (self.grain * self.gtes))
        raw = read(gd_offset * BLOCK, tables * 4)
        self.gd = struct.unpack("<%dI" % tables, raw[: tables * 4])
        self._gt = {}
        self._grains = {}

    def _grain(self, number):
        if number in self._grains:
            return self._grains[number]
        table, index = divmod(number, self.gtes)
        if table >= len(self.gd) or not self.gd[table]:
            return None
        if table not in self._gt:
            raw = self._read(self.gd[table] * BLOCK, self.gtes * 4)
            self._gt[table] = struct.unpack("<%dI" % self.gtes, raw)
        sector = self._gt[table][index]
        if sector in (0, 1):
            return None
        marker = self._read(sector * BLOCK, 12)
        length = struct.unpack_from("<I", marker, 8)[0]
        data = zlib.decompress(self._read(sector * BLOCK + 12, length))
        if len(self._grains) > 64:
            self._grains.clear()
        self._grains[number] = data
        return data

    def read_sectors(self, lba, count):
        out = bytearray()
        grain_bytes = self.grain * BLOCK
        for sector in range(lba, lba + count):
            number, within = divmod(sector, self.grain)
            data = self._grain(number)
            if data is None:
                out += b"\0" * BLOCK
            else:
                start = within * BLOCK
                out += data[start : start + BLOCK].ljust(BLOCK, b"\0") if start < grain_bytes else b"\0" * BLOCK
        return bytes(out)


def _esp_start(disk):
    """First LBA of the EFI system partition (GPT type or MBR type 0xEF), or None."""
    lba1 = disk.read_sectors(1, 1)
    if lba1[:8] == b"EFI PART":
        entries_lba, count, entry_size = struct.unpack_from("<QII", lba1, 72)
        raw = disk.read_sectors(entries_lba, -(-min(count, 128) * entry_size // BLOCK))
        for i in range(min(count, 128)):
            entry = raw[i * entry_size : (i + 1) * entry_size]
            if len(entry) < 48:
                break
            if str(uuid.UUID(bytes_le=entry[:16])) == ESP_TYPE_GUID:
                return struct.unpack_from("<Q", entry, 32)[0]
        return None
    mbr = disk.read_sectors(0, 1)
    if mbr[510:512] == b"\x55\xaa":
        for i in range(4):
            entry = mbr[446 + 16 * i : 462 + 16 * i]
            if entry[4] == 0xEF:
                return struct.unpack_from("<I", entry, 8)[0]
    return None


class _Fat:
    """Just enough FAT12/16/32 to follow directories by their 8.3 names."""

    def __init__(self, disk, start):
        self.disk = disk
        self.start = start
        bpb = disk.read_sectors(start, 1)
        if bpb[510:512] != b"\x55\xaa":
            raise OvaError("no FAT boot sector")
        self.sector_size, self.per_cluster, reserved, fats, root_entries, total16 = struct.unpack_from(
            "<HBHBHH", bpb, 11
        )
        if self.sector_size != BLOCK or not self.per_cluster:
            raise OvaError("unsupported FAT geometry")
        fat16 = struct.unpack_from("<H", bpb, 22)[0]
        total = total16 or struct.unpack_from("<I", bpb, 32)[0]
        fat_size = fat16 or struct.unpack_from("<I", bpb, 36)[0]
        self.fat_start = start + reserved
        root_sectors = -(-root_entries * 32 // BLOCK)
        self.root_start = self.fat_start + fats * fat_size
        self.data_start = self.root_start + root_sectors
        clusters = (total - (self.data_start - start)) // self.per_cluster
        self.bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.root = ("fixed", root_sectors) if self.bits != 32 else ("chain", struct.unpack_from("<I", bpb, 44)[0])

    def _next(self, cluster):
        offset = cluster * self.bits // 8
        sector, within = divmod(offset, BLOCK)
        raw = self.disk.read_sectors(self.fat_start + sector, 2)
        if self.bits == 32:
            return struct.unpack_from("<I", raw, within)[0] & 0x0FFFFFFF
        if self.bits == 16:
            return struct.unpack_from("<H", raw, within)[0]
        value = struct.unpack_from("<H", raw, within)[0]
        return value >> 4 if cluster & 1 else value & 0xFFF

    def _chain(self, cluster):
        end = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[self.bits]
        for _i in range(4096):  # directories this deep into an ESP do not exist; stop on loops
            if cluster < 2 or cluster >= end:
                return
            yield cluster
            cluster = self._next(cluster)

    def _entries(self, where):
        if where[0] == "fixed":
            blocks = [self.disk.read_sectors(self.root_start, where[1])]
        else:
            blocks = (
                self.disk.read_sectors(self.data_start + (c - 2) * self.per_cluster, self.per_cluster)
                for c in self._chain(where[1])
            )
        for block in blocks:
            for i in range(0, len(block), 32):
                entry = block[i : i + 32]
                if entry[0] == 0:
                    return
                if entry[0] == 0xE5 or entry[11] == 0x0F:  # deleted, long-name part
                    continue
                name = entry[:8].decode("latin-1").rstrip() + "." + entry[8:11].decode("latin-1").rstrip()
                cluster = (struct.unpack_from("<H", entry, 20)[0] << 16) | struct.unpack_from("<H", entry, 26)[0]
                yield name.rstrip(".").upper(), bool(entry[11] & 0x10), cluster

    def exists(self, path):
        where = self.root
        parts = path.upper().split("/")
        for depth, part in enumerate(parts):
            for name, is_dir, cluster in self._entries(where):
                if name == part:
                    if depth == len(parts) - 1:
                        return True
                    if not is_dir:
                        return False
                    where = ("chain", cluster)
                    break
            else:
                return False
        return False


def efi_fallback_loader(read, size, architecture="x86_64"):
    """Whether the boot disk's EFI system partition has EFI/BOOT/BOOT<arch>.EFI: True, False, or None (unknown)."""
    loader = FALLBACK_LOADERS.get(architecture, "BOOTX64.EFI")
    try:
        disk = StreamVmdk(read, size)
        start = _esp_start(disk)
        if start is None:
            return None
        return _Fat(disk, start).exists("EFI/BOOT/" + loader)
    except (OvaError, struct.error, zlib.error, ValueError):
        return None


class Member:
    def __init__(self, name, header_offset, offset, size, fmt, pax=False):
        self.name = name
        self.header_offset = header_offset
        self.offset = offset
        self.size = size
        self.format = fmt
        self.pax = pax

    def as_dict(self):
        return {"name": self.name, "offset": self.offset, "size": self.size, "header": self.format}


def _pax_records(data):
    records = {}
    pos = 0
    while pos < len(data):
        match = re.match(rb"(\d+) ", data[pos:])
        if not match:
            break
        length = int(match.group(1))
        rec = data[pos + match.end() : pos + length - 1]
        key, dummy, value = rec.partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return records


class OvaReader:
    """Walk an OVA's tar headers through ``read(offset, length)``; never reads member data it is not asked for."""

    def __init__(self, read, size):
        self.read = read
        self.size = size
        self.members = self._walk()

    def _walk(self):
        members = []
        offset = 0
        long_name = None
        pax = {}
        while offset + BLOCK <= self.size:
            block = self.read(offset, BLOCK)
            if len(block) < BLOCK:
                raise OvaError("truncated tar header at offset %d" % offset)
            if block == b"\0" * BLOCK:
                break
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise OvaError("not a tar archive, or a damaged header at offset %d: %s" % (offset, exc)) from None
            magic = block[257:265]
            fmt = "gnu" if magic == b"ustar  \0" else "ustar" if magic[:6] == b"ustar\0" else "v7"
            data_offset = offset + BLOCK
            next_offset = data_offset + round_up(info.size)
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = self.read(data_offset, info.size).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
                pax = _pax_records(self.read(data_offset, info.size))
                pax["_seen"] = "1"
            else:
                name = pax.get("path") or long_name or info.name
                size = int(pax["size"]) if "size" in pax else info.size
                members.append(Member(name, offset, data_offset, size, "pax" if pax else fmt, pax=bool(pax)))
                next_offset = data_offset + round_up(size)
                long_name = None
                pax = {}
            if next_offset > self.size:
                raise OvaError("member %r at offset %d runs past the end of the archive" % (info.name, offset))
            offset = next_offset
        return members

    def member(self, name):
        for m in self.members:
            if m.name == name:
                return m
        return None

    def read_member(self, member, limit=None):
        length = member.size if limit is None else min(limit, member.size)
        return self.read(member.offset, length)

    def sha256(self, member, chunk=8 << 20):
        digest = hashlib.sha256()
        pos = 0
        while pos < member.size:
            data = self.read(member.offset + pos, min(chunk, member.size - pos))
            if not data:
                raise OvaError("member %r is truncated" % member.name)
            digest.update(data)
            pos += len(data)
        return digest.hexdigest()


def parse_manifest(text):
    """Manifest lines ``ALGO(name)= hex`` -> {name: (algo, hex)}."""
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        match = re.match(r"^(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)$", line)
        if not match:
            raise OvaError("manifest line not understood: %r" % line)
        entries[match.group(2)] = (match.group(1), match.group(3).lower())
    return entries


def inspect_ova(read, size, verify_manifest=False):
    """Facts about an OVA and the problems VM Import would reject it for (``problems``, a list of strings)."""
    problems = []
    reader = OvaReader(read, size)
    members = reader.members
    result = {
        "members": [m.as_dict() for m in members],
        "vm_name": None,
        "guest_os": None,
        "firmware": None,
        "boot_mode": None,
        "architecture": None,
        "platform": None,
        "disks": [],
        "manifest": None,
        "problems": problems,
    }
    if not members:
        problems.append("the archive has no members")
        return result
    pax = [m.name for m in members if m.pax]
    if pax:
        problems.append("PAX extended headers on %s: VM Import and vSphere accept GNU or ustar tar only" % pax)
    ovfs = [m for m in members if m.name.lower().endswith(".ovf")]
    if not ovfs:
        problems.append("no .ovf descriptor in the archive")
        return result
    if members[0] is not ovfs[0]:
        problems.append("the OVF descriptor %r is not the first member (first is %r)" % (ovfs[0].name, members[0].name))
    if ovfs[0].size > MAX_TEXT_MEMBER:
        problems.append("the OVF descriptor is %d bytes; a descriptor is a few KiB" % ovfs[0].size)
        return result
    try:
        ovf = OvfDescriptor(reader.read_member(ovfs[0]))
    except OvaError as exc:
        problems.append(str(exc))
        return result
    result.update(
        vm_name=ovf.vm_name,
        guest_os=ovf.guest_os,
        firmware=ovf.firmware,
        boot_mode=ovf.boot_mode,
        architecture=ovf.architecture,
        platform=ovf.platform,
    )
    guest_problem = ovf.guest_os_problem()
    if guest_problem:
        problems.append(guest_problem)
    if len(ovf.disks) > MAX_DISKS:
        problems.append("%d disks: VM Import takes at most %d in one import" % (len(ovf.disks), MAX_DISKS))
    for disk in ovf.disks:
        info = {
            "name": disk["href"],
            "capacity": disk["capacity"],
            "size": None,
            "format": None,
            "stream_optimized": False,
            "descriptor_format": disk["format"],
        }
        member = reader.member(disk["href"]) if disk["href"] else None
        if member is None:
            problems.append(
                "disk %r (%s) is referenced by the descriptor but not in the archive" % (disk["href"], disk["disk_id"])
            )
        else:
            info["size"] = member.size
            header = parse_vmdk_header(reader.read_member(member, limit=64 * 1024))
            info.update(format=header["format"], stream_optimized=header["stream_optimized"])
            if header.get("virtual_size"):
                info["virtual_size"] = header["virtual_size"]
            if not header["stream_optimized"]:
                problems.append("disk %r: %s" % (disk["href"], header["reason"]))
            if disk["file_size"] is not None and disk["file_size"] != member.size:
                problems.append(
                    "disk %r is %d bytes in the archive but the descriptor says %d"
                    % (disk["href"], member.size, disk["file_size"])
                )
        if disk["capacity"] >= MAX_DISK_CAPACITY:
            problems.append(
                "disk %r has a capacity of %d bytes: VM Import takes disks under 16 TiB"
                % (disk["href"], disk["capacity"])
            )
        result["disks"].append(info)
    if ovf.firmware == "efi" and result["disks"] and result["disks"][0]["stream_optimized"]:
        boot = reader.member(result["disks"][0]["name"])
        found = efi_fallback_loader(
            lambda off, n: reader.read(boot.offset + off, max(0, min(n, boot.size - off))), boot.size, ovf.architecture
        )
        result["efi_fallback_loader"] = found
        if found is False:
            problems.append(
                "the VM boots with EFI firmware, but the EFI system partition of %r has no EFI/BOOT/%s: VM Import "
                "needs that fallback loader to boot it (grub-install --removable, or copy the distribution's loader)"
                % (boot.name, FALLBACK_LOADERS.get(ovf.architecture, "BOOTX64.EFI"))
            )
    disk_files = {d["href"] for d in ovf.disks}
    for ref in ovf.files.values():
        if ref["href"] and ref["href"] not in disk_files and reader.member(ref["href"]) is None:
            problems.append(
                "file %r is referenced by the descriptor but not in the archive (an ISO or floppy image left "
                "attached? eject media before exporting)" % ref["href"]
            )
    mfs = [m for m in members if m.name.lower().endswith(".mf")]
    if mfs and mfs[0].size > MAX_TEXT_MEMBER:
        problems.append("the manifest %r is %d bytes; a manifest is a few lines" % (mfs[0].name, mfs[0].size))
        mfs = []
    if mfs:
        try:
            entries = parse_manifest(reader.read_member(mfs[0]).decode("utf-8", "replace"))
        except OvaError as exc:
            problems.append(str(exc))
            entries = {}
        checked = {"name": mfs[0].name, "verified": False, "mismatches": [], "unlisted": []}
        listed = set(entries)
        checked["unlisted"] = sorted(m.name for m in members if m is not mfs[0] and m.name not in listed)
        if verify_manifest:
            algos = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}
            for name, (algo, want) in sorted(entries.items()):
                member = reader.member(name)
                if member is None:
                    checked["mismatches"].append(name)
                    problems.append("the manifest lists %r, which is not in the archive" % name)
                    continue
                if algo == "SHA256":
                    got = reader.sha256(member)
                else:
                    digest = algos[algo]()  # noqa: S324 - verifying a digest the OVA chose, not hashing secrets
                    pos = 0
                    while pos < member.size:
                        data = reader.read(member.offset + pos, min(8 << 20, member.size - pos))
                        digest.update(data)
                        pos += len(data)
                    got = digest.hexdigest()
                if got != want:
                    checked["mismatches"].append(name)
                    problems.append("manifest %s of %r does not match its content" % (algo, name))
            checked["verified"] = True
        result["manifest"] = checked
    return result
