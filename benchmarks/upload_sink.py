#!/usr/bin/env python
"""Upload throughput: our MultipartSink vs boto3's TransferManager, same data, same endpoint, one run.

Starts the moto S3 server (tests/simulators/vmimport), writes ``--size-mib`` of random data to a
file, then uploads that file ``--rounds`` times each way, alternating the order (A B B A ...) so a
busy neighbour on a shared machine hurts both ways alike:

  sink          plugins/module_utils/s3_stream.MultipartSink as vsphere_ova_export uses it
                (part size from choose_part_size: 16 MiB here, max_concurrency 4, the module default),
                fed 1 MiB reads of the file
  transfer      boto3 upload_file with TransferManager's defaults (8 MiB parts, 10 threads), which is
                what ``aws s3 cp`` does
  transfer_same upload_file with the sink's settings (16 MiB parts, 4 threads): the same work split
                the same way, so the ratio isolates the code rather than the tuning

and prints the median throughput of each and the ratio sink / transfer (target >= 0.95).

    .venv/bin/python benchmarks/upload_sink.py                   # 1 GiB, 3 rounds (by hand)
    .venv/bin/python benchmarks/upload_sink.py --size-mib 64 --rounds 2 --json out.json
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_paths import setup_paths
from export_stream import make_raw

MIB = 1 << 20
BUCKET = "bench-upload"
WAYS = ("sink", "transfer", "transfer_same")


def upload_sink(s3, path, key, s3_stream):
    size = os.path.getsize(path)
    part_size, _note = s3_stream.choose_part_size(size)
    sink = s3_stream.MultipartSink(s3, BUCKET, key, part_size, max_concurrency=4).start()
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(MIB)
                if not data:
                    break
                sink.write(data)
        info = sink.finish(b"")
    except BaseException:
        sink.abort()
        raise
    return {"parts": info["parts"], "part_size_mib": part_size // MIB, "threads": 4}


def upload_transfer(s3, path, key, chunk_mib=None, threads=None):
    from boto3.s3.transfer import TransferConfig  # noqa: PLC0415 - after sys.path is set up

    cfg = TransferConfig() if chunk_mib is None else TransferConfig(multipart_chunksize=chunk_mib * MIB)
    if threads is not None:
        cfg.max_concurrency = threads
    s3.upload_file(str(path), BUCKET, key, Config=cfg)
    return {"part_size_mib": cfg.multipart_chunksize // MIB, "threads": cfg.max_concurrency}


def run(size_mib, rounds, workdir=None, log=print):
    """Measure; returns the result dict (also what run.py stores)."""
    setup_paths()
    from ansible_collections.esxi2ami.migrate.plugins.module_utils import s3_stream  # noqa: PLC0415
    from tests.simulators.vmimport.launcher import MotoVmImport  # noqa: PLC0415

    size = size_mib * MIB
    samples = {w: [] for w in WAYS}
    parts_samples = {w: [] for w in WAYS}
    complete_samples = {w: [] for w in WAYS}
    with tempfile.TemporaryDirectory(prefix="upload-bench-", dir=workdir) as tmp, MotoVmImport() as aws:
        path = Path(tmp) / "data.bin"
        make_raw(path, size)
        s3 = aws.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        settings = {}
        marks = {}

        def mark(name):
            def handler(**_kwargs):
                marks[name] = time.monotonic()

            return handler

        # When CompleteMultipartUpload is sent and answered: moto assembles the object then (server time, the
        # same for both ways), so "parts" time = start -> Complete sent isolates the client side.
        s3.meta.events.register("before-call.s3.CompleteMultipartUpload", mark("complete_sent"))
        s3.meta.events.register("after-call.s3.CompleteMultipartUpload", mark("complete_done"))
        # Warm-up (not measured): connection pools, moto's first multipart upload, page cache.
        upload_sink(s3, path, "warmup-sink.bin", s3_stream)
        upload_transfer(s3, path, "warmup-transfer.bin")
        s3.delete_objects(
            Bucket=BUCKET, Delete={"Objects": [{"Key": "warmup-sink.bin"}, {"Key": "warmup-transfer.bin"}]}
        )
        for rnd in range(rounds):
            order = WAYS if rnd % 2 == 0 else tuple(reversed(WAYS))
            for way in order:
                key = "%s-%d.bin" % (way, rnd)
                aws.reset_counters()
                started = time.monotonic()
                if way == "sink":
                    settings[way] = upload_sink(s3, path, key, s3_stream)
                elif way == "transfer":
                    settings[way] = upload_transfer(s3, path, key)
                else:
                    settings[way] = upload_transfer(s3, path, key, chunk_mib=16, threads=4)
                wall = time.monotonic() - started
                parts_samples[way].append(round(marks["complete_sent"] - started, 3))
                complete_samples[way].append(round(marks["complete_done"] - marks["complete_sent"], 3))
                calls = aws.counters()["calls"]
                head = s3.head_object(Bucket=BUCKET, Key=key)
                if head["ContentLength"] != size:
                    raise RuntimeError("%s uploaded %d bytes, expected %d" % (way, head["ContentLength"], size))
                s3.delete_object(Bucket=BUCKET, Key=key)  # keep the server's storage small
                samples[way].append(round(wall, 3))
                settings[way]["s3_put_calls"] = calls.get("s3:PUT", 0)
                log(
                    "  round %d %-13s %7.2f s  %6.1f MB/s  (parts %.2f s + complete %.2f s)"
                    % (rnd + 1, way, wall, size / wall / 1e6, parts_samples[way][-1], complete_samples[way][-1])
                )
    out = {"size_mib": size_mib, "rounds": rounds, "ways": {}}
    for way in WAYS:
        med = statistics.median(samples[way])
        parts_med = statistics.median(parts_samples[way])
        out["ways"][way] = dict(
            settings[way],
            wall_s=samples[way],
            median_wall_s=round(med, 3),
            median_mb_s=round(size / med / 1e6, 1),
            parts_s=parts_samples[way],
            median_parts_s=round(parts_med, 3),
            median_parts_mb_s=round(size / parts_med / 1e6, 1),
            complete_s=complete_samples[way],
            median_complete_s=round(statistics.median(complete_samples[way]), 3),
        )
    sink_mb = out["ways"]["sink"]["median_mb_s"]
    out["sink_vs_transfer"] = round(sink_mb / out["ways"]["transfer"]["median_mb_s"], 3)
    out["sink_vs_transfer_same_settings"] = round(sink_mb / out["ways"]["transfer_same"]["median_mb_s"], 3)
    sink_parts = out["ways"]["sink"]["median_parts_mb_s"]
    out["sink_vs_transfer_parts_only"] = round(sink_parts / out["ways"]["transfer"]["median_parts_mb_s"], 3)
    out["target"] = ">= 0.95"
    out["met"] = out["sink_vs_transfer"] >= 0.95
    return out


def print_table(res, log=print):
    log("")
    log(
        "| way | part MiB | threads | UploadPart calls | median wall s | median MB/s | median parts s (MB/s) "
        "| median Complete s | all walls s |"
    )
    log("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for way, r in res["ways"].items():
        log(
            "| %s | %d | %d | %d | %.2f | %.1f | %.2f (%.1f) | %.2f | %s |"
            % (
                way,
                r["part_size_mib"],
                r["threads"],
                r["s3_put_calls"],
                r["median_wall_s"],
                r["median_mb_s"],
                r["median_parts_s"],
                r["median_parts_mb_s"],
                r["median_complete_s"],
                ", ".join("%.2f" % w for w in r["wall_s"]),
            )
        )
    log("")
    log(
        "sink / TransferManager (defaults) = %.3f (target >= 0.95: %s); same settings = %.3f; "
        "parts phase only (without moto's CompleteMultipartUpload) = %.3f"
        % (
            res["sink_vs_transfer"],
            "met" if res["met"] else "MISSED",
            res["sink_vs_transfer_same_settings"],
            res["sink_vs_transfer_parts_only"],
        )
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="bytes to upload per way, in MiB (default 1024)")
    ap.add_argument("--rounds", type=int, default=3, help="uploads per way, order alternating (default 3)")
    ap.add_argument("--workdir", help="where the data file goes (default: a temp dir)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.size_mib < 6 or args.rounds < 1:
        ap.error("--size-mib must be at least 6 (more than one part) and --rounds at least 1")
    res = run(args.size_mib, args.rounds, args.workdir)
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
