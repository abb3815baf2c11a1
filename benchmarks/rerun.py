#!/usr/bin/env python
"""Idempotent re-run of a finished migration: wall time and bytes moved (target: 0 bytes, < 30 s).

Migrates ``--vms`` VMs with playbooks/migrate.yml on fresh simulators (the same set-up as
playbook_scale.py), then runs the very same command again and measures the second run:

- wall time of ``ansible-playbook``;
- bytes read from vSphere: every NFC download the vcsim log records during the run;
- bytes written to S3: PUT calls (UploadPart / PutObject) and POST calls (CreateMultipartUpload,
  CompleteMultipartUpload) from the simulator's counters, and the size of every object whose ETag or
  LastModified changed;
- ImportImage calls, AMIs before and after, and ``changed`` per host from the PLAY RECAP.

    .venv/bin/python benchmarks/rerun.py                     # 4 VMs, 64 MiB disk (by hand)
    .venv/bin/python benchmarks/rerun.py --vms 1 --disk-mib 8 --task-duration 4
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from playbook_scale import BUCKET, Migration, make_disk  # noqa: E402 pylint: disable=wrong-import-position


def _objects(s3):
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["ETag"], obj["LastModified"].isoformat(), obj["Size"])
    return out


def run(vms, disk_mib, task_duration, workdir=None, log=print):
    with tempfile.TemporaryDirectory(prefix="rerun-bench-", dir=workdir) as tmp:
        disk = make_disk(Path(tmp) / "disk.raw", disk_mib)
        with Migration(tmp, disk, vms, task_duration) as mig:
            first = mig.run()
            log("  first run : %7.2f s  (%d AMIs, NFC %s bytes)" % (first["wall_s"], first["amis"], first["nfc_bytes"]))
            s3 = mig.aws.client("s3")
            before = _objects(s3)
            second = mig.run()
            after = _objects(s3)
    rewritten = [k for k in after if before.get(k) != after[k]]
    s3_bytes = sum(after[k][2] for k in rewritten)
    moved = (second["nfc_bytes"] or 0) + s3_bytes
    res = {
        "vms": vms,
        "disk_mib": disk_mib,
        "task_duration_s": task_duration,
        "first_run": first,
        "rerun": second,
        "rerun_wall_s": second["wall_s"],
        "rerun_nfc_bytes": second["nfc_bytes"],
        "rerun_s3_objects_rewritten": rewritten,
        "rerun_s3_bytes_written": s3_bytes,
        "rerun_bytes_moved": moved,
        "rerun_changed_hosts": {h: n for h, n in second["changed"].items() if n},
        "amis_after_rerun": second["amis"],
    }
    res["bytes_met"] = (
        moved == 0 and second["s3_put_calls"] == 0 and second["s3_post_calls"] == 0 and second["nfc_bytes"] == 0
    )
    res["time_met"] = second["wall_s"] < 30
    log(
        "  re-run    : %7.2f s  (NFC %s bytes, %d S3 PUT + %d POST calls, %d ImportImage calls)"
        % (
            second["wall_s"],
            second["nfc_bytes"],
            second["s3_put_calls"],
            second["s3_post_calls"],
            second["import_image_calls"],
        )
    )
    return res


def print_table(res, log=print):
    first, second = res["first_run"], res["rerun"]
    log("")
    log(
        "| run | wall s | NFC bytes read | S3 PUT calls | S3 POST calls | S3 bytes written | ImportImage calls | AMIs "
        "| hosts changed |"
    )
    log("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    log(
        "| first | %.2f | %s | %d | %d | (all) | %d | %d | %d |"
        % (
            first["wall_s"],
            first["nfc_bytes"],
            first["s3_put_calls"],
            first["s3_post_calls"],
            first["import_image_calls"],
            first["amis"],
            sum(1 for n in first["changed"].values() if n),
        )
    )
    log(
        "| re-run | %.2f | %s | %d | %d | %d | %d | %d | %s |"
        % (
            second["wall_s"],
            second["nfc_bytes"],
            second["s3_put_calls"],
            second["s3_post_calls"],
            res["rerun_s3_bytes_written"],
            second["import_image_calls"],
            second["amis"],
            ", ".join("%s=%d" % kv for kv in sorted(res["rerun_changed_hosts"].items())) or "none",
        )
    )
    log("")
    log(
        "%d VM(s): re-run moved %d bytes (target 0: %s) in %.2f s (target < 30 s: %s)"
        % (
            res["vms"],
            res["rerun_bytes_moved"],
            "met" if res["bytes_met"] else "MISSED",
            res["rerun_wall_s"],
            "met" if res["time_met"] else "MISSED",
        )
    )
    log("re-run's slowest tasks (profile_tasks; tasks of parallel hosts overlap):")
    for name, secs in res["rerun"]["slowest_tasks"]:
        log("  %6.2f s  %s" % (secs, name))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--vms", type=int, default=4, help="VMs migrated, then re-run (default 4)")
    ap.add_argument("--disk-mib", type=int, default=64, help="size of the VMs' disk in MiB (default 64)")
    ap.add_argument("--task-duration", type=float, default=20, help="simulated import duration in s (default 20)")
    ap.add_argument("--workdir", help="where the disk and run files go (default: a temp dir)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.vms < 1 or args.disk_mib < 4:
        ap.error("--vms must be at least 1 and --disk-mib at least 4")
    res = run(args.vms, args.disk_mib, args.task_duration, args.workdir)
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
