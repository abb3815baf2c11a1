#!/usr/bin/env python
"""Streaming vs staged OVA export, measured on one machine in one run.

Starts the vSphere simulator (tests/simulators/vcsim) with a VM whose disk is ``--size-mib`` of
incompressible data, and the moto S3 server (tests/simulators/vmimport), then runs each way in a
fresh child process (so peak RSS is its own):

  vsphere_only  export the OVA and throw the bytes away (the vSphere half alone)
  staged        export to a local file, then upload it with boto3's TransferManager (as `aws s3 cp`)
  s3_only       multipart-upload the same OVA bytes read from that file (the S3 half alone)
  streaming     vsphere_ova_export's way: lease -> OVA stream -> S3 multipart, no local copy

and prints wall time, peak RSS and local bytes written for each.

    .venv/bin/python benchmarks/export_stream.py               # 1 GiB disk (by hand)
    .venv/bin/python benchmarks/export_stream.py --size-mib 32 # quick, for CI
    .venv/bin/python benchmarks/export_stream.py --vsphere-rate-mib 64  # a host that serves 64 MiB/s
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_paths import setup_paths

MIB = 1 << 20
BUCKET = "bench"
VM = "bench"
MODES = ("vsphere_only", "staged", "s3_only", "streaming")


def _io_write_bytes():
    """Bytes this process caused to be written to storage (/proc/self/io), or None."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_seconds(pid):
    """User + system CPU seconds of a process and its children so far (/proc/<pid>/stat), or 0."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class NullSink:
    """Takes the OVA's bytes and drops them: what the vSphere half costs on its own."""

    bytes_written = 0

    def __init__(self):
        self.tail_size = 0

    def write(self, data):
        self.tail_size += len(data)

    def hold(self, offset, length):
        pass

    def patch(self, offset, data):
        pass

    def finish(self, head):
        return {}

    def abort(self):
        pass


def child(mode, cfg):
    """Run one way; print a JSON line with its measurements."""
    setup_paths()
    import boto3  # noqa: PLC0415 - after sys.path is set up
    from boto3.s3.transfer import TransferConfig  # noqa: PLC0415

    from ansible_collections.esxi2ami.migrate.plugins.module_utils import ova, s3_stream, vsphere  # noqa: PLC0415

    s3 = boto3.client("s3", endpoint_url=cfg["aws_url"])  # credentials and region: the simulator's env
    io_before = _io_write_bytes()
    out = {"mode": mode}
    started = time.monotonic()

    def export(make_sink):
        client = vsphere.VSphereClient(cfg["host"], "user", "pass", port=cfg["port"], validate_certs=False)
        try:
            return vsphere.export_ova(client, client.find_vm(name=VM), make_sink)
        finally:
            client.close()

    def multipart(key, estimate):
        part_size, _note = s3_stream.choose_part_size(estimate)
        return s3_stream.MultipartSink(s3, BUCKET, key, part_size, max_concurrency=4).start()

    local = 0
    if mode == "vsphere_only":
        res = export(lambda head, est: NullSink())
        out["size"] = res["size"]
    elif mode == "streaming":
        res = export(lambda head, est: multipart("streaming.ova", est))
        out["size"] = res["size"]
    elif mode == "staged":
        path = cfg["staged_path"]
        res = export(lambda head, est: ova.FileSink(path, head))
        out["export_s"] = round(time.monotonic() - started, 2)
        local = os.path.getsize(path)
        t_up = time.monotonic()
        s3.upload_file(
            path, BUCKET, "staged.ova", Config=TransferConfig(multipart_chunksize=8 * MIB, max_concurrency=10)
        )
        out["upload_s"] = round(time.monotonic() - t_up, 2)
        out["size"] = res["size"]
    elif mode == "s3_only":
        path = cfg["staged_path"]
        size = os.path.getsize(path)
        sink = multipart("s3_only.ova", size)
        with open(path, "rb") as f:
            while True:
                data = f.read(MIB)
                if not data:
                    break
                sink.write(data)
        sink.finish(b"")
        out["size"] = size
    out["wall_s"] = round(time.monotonic() - started, 2)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
    out["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    out["local_bytes"] = local
    io_after = _io_write_bytes()
    out["io_write_bytes"] = None if io_before is None or io_after is None else io_after - io_before
    print(json.dumps(out), flush=True)


def make_raw(path, size):
    """A raw disk of incompressible data (the worst case for the transfer: VMDK size ~ disk size)."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="disk size in MiB (default 1024)")
    ap.add_argument("--workdir", help="where the raw disk and the staged OVA go (default: a temp dir)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated subset of %s (s3_only needs staged before it)" % ", ".join(MODES),
    )
    ap.add_argument(
        "--vsphere-rate-mib",
        type=float,
        default=0,
        help="limit the simulator's disk download to this many MiB/s, like a real host compressing the "
        "stream-optimized VMDK on the fly (default: unlimited, the simulator serves a ready-made VMDK)",
    )
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, json.loads(args.cfg))
        return 0

    setup_paths()
    from tests.simulators.vcsim.launcher import Vcsim, disk_vm  # noqa: PLC0415
    from tests.simulators.vmimport.launcher import MotoVmImport  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="export-bench-", dir=args.workdir) as tmp:
        raw = Path(tmp) / "disk.raw"
        print("making a %d MiB disk of random data and its stream-optimized VMDK ..." % args.size_mib, flush=True)
        make_raw(raw, args.size_mib * MIB)
        rate = int(args.vsphere_rate_mib * MIB) or None
        with (
            Vcsim(config={"vms": [disk_vm(VM, raw, power="poweredOff")]}, rate_limit=rate) as sim,
            MotoVmImport() as aws,
        ):
            aws.client("s3").create_bucket(Bucket=BUCKET)
            cfg = {
                "host": sim.host,
                "port": sim.port,
                "aws_url": aws.url,
                "staged_path": str(Path(tmp) / "staged.ova"),
            }
            results = []
            modes = [m for m in MODES if m in args.modes.split(",")]
            if "s3_only" in modes and "staged" not in modes:
                ap.error("s3_only uploads the file staged writes: include staged")
            for mode in modes:
                # A fresh S3 for each way: moto keeps every object in its process, and a full store
                # (the previous way's 1 GiB) slows the next upload down.
                aws.reset()
                aws.client("s3").create_bucket(Bucket=BUCKET)
                servers_before = _cpu_seconds(sim.proc.pid) + _cpu_seconds(aws.proc.pid)
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", mode, "--cfg", json.dumps(cfg)],
                    capture_output=True,
                    text=True,
                    check=False,
                    env=dict(os.environ, **aws.env),
                )
                if proc.returncode != 0:
                    print(proc.stdout, proc.stderr, file=sys.stderr)
                    return 1
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                res["server_cpu_s"] = round(_cpu_seconds(sim.proc.pid) + _cpu_seconds(aws.proc.pid) - servers_before, 2)
                results.append(res)
                print("  %-13s %7.2f s" % (mode, res["wall_s"]), flush=True)
    by = {r["mode"]: r for r in results}
    wall = {m: r["wall_s"] for m, r in by.items()}
    summary = {
        "size_mib": args.size_mib,
        "vsphere_rate_mib": args.vsphere_rate_mib or None,
        "ova_bytes": results[0]["size"],
        "results": results,
    }
    if {"streaming", "vsphere_only", "s3_only"} <= set(wall):
        summary["streaming_vs_slower_half"] = round(wall["streaming"] / max(wall["vsphere_only"], wall["s3_only"]), 2)
    if {"streaming", "staged"} <= set(wall):
        summary["streaming_vs_staged"] = round(wall["streaming"] / wall["staged"], 2)
    print()
    print(
        "| way | wall s | MB/s | peak RSS MiB | local OVA bytes | /proc/self/io write_bytes | CPU s (ours + servers) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        extra = " (export %.2f + upload %.2f)" % (r["export_s"], r["upload_s"]) if r["mode"] == "staged" else ""
        print(
            "| %s | %.2f%s | %.1f | %.1f | %d | %s | %.1f + %.1f |"
            % (
                r["mode"],
                r["wall_s"],
                extra,
                r["size"] / r["wall_s"] / 1e6,
                r["peak_rss_mib"],
                r["local_bytes"],
                r["io_write_bytes"],
                r["cpu_s"],
                r["server_cpu_s"],
            )
        )
    print()
    print(
        "streaming / slower half alone = %s (target <= 1.15); streaming / staged = %s"
        % (summary.get("streaming_vs_slower_half", "n/a"), summary.get("streaming_vs_staged", "n/a"))
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
