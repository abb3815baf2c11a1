#!/usr/bin/env python
"""Whole playbook on the simulators for 1, 4 and 8 VMs with the same disk: how total time grows.

For each VM count N it starts a fresh vSphere simulator (tests/simulators/vcsim) with N powered-on
VMs whose disk is the same file (``--disk-mib`` of random data behind an MBR, so VM Import accepts
it), a fresh moto + VM Import simulator (``--task-duration`` D per import) with an empty bucket,
and runs ``ansible-playbook playbooks/migrate.yml -f max(N, 8)`` as a user would (guest_prepare
skipped, everything else real: graceful power-off, streaming export to S3, OVA validation,
service role, import, tagging, summary). It records the wall time, that every VM got its AMI, and
what moved (NFC bytes from the vcsim log, S3 PUT calls, ImportImage calls from the counters).

Ideal is flat: N migrations in parallel take as long as one. On a small machine the CPU-bound parts
(the export's hashing and S3 upload, ansible's forks) are shared, so the curve rises; what matters
is that it rises far slower than N x the time of one.

    .venv/bin/python benchmarks/playbook_scale.py                        # 1,4,8 VMs, 64 MiB disk, D=20 s
    .venv/bin/python benchmarks/playbook_scale.py --vms 1,4 --disk-mib 8 --task-duration 4
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_paths import COLLECTIONS, REPO, setup_paths

MIB = 1 << 20
BUCKET = "bench-migrations"
NFC_SENT = re.compile(r"nfc GET \S+: sent (\d+) bytes")
NFC_ANY = re.compile(r"nfc GET \S+: (?:sent|cut after|client went away after|write failed after) (\d+) bytes")


def make_disk(path, size_mib):
    """The same raw disk for every VM: an MBR (the import's partition check), then random data."""
    setup_paths()
    from tests.simulators.vmimport.ova_builder import make_raw_disk  # noqa: PLC0415

    make_raw_disk(path, size_mib * MIB)
    with open(path, "r+b") as f:
        f.seek(2 * MIB)  # past what the simulated service inspects (boot sector, first MiB)
        left = size_mib * MIB - 2 * MIB
        while left > 0:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n
    return Path(path)


class Migration:
    """N VMs on fresh simulators, and ansible-playbook playbooks/migrate.yml for them (use as a context manager)."""

    def __init__(self, workdir, disk, vms, task_duration, poll_interval=1):
        self.workdir = Path(workdir)
        self.disk = disk
        self.names = ["bench-vm-%02d" % (i + 1) for i in range(vms)]
        self.task_duration = task_duration
        self.poll_interval = poll_interval
        self.sim = self.aws = None

    def __enter__(self):
        setup_paths()
        from tests.simulators.vcsim.launcher import Vcsim, disk_vm  # noqa: PLC0415
        from tests.simulators.vmimport.launcher import MotoVmImport  # noqa: PLC0415

        vms = [disk_vm(n, self.disk, guest_id="debian12_64Guest") for n in self.names]
        self.sim = Vcsim(config={"vms": vms}, defaults=False, shutdown_delay=1.0).start()
        try:
            self.aws = MotoVmImport(task_duration=self.task_duration).start()
            self.aws.client("s3").create_bucket(Bucket=BUCKET)
        except BaseException:
            self.sim.stop()
            raise
        self.inventory = self.workdir / "inventory.json"
        self.inventory.write_text(
            json.dumps(
                {
                    "all": {
                        "children": {"vms": {"hosts": {n: {"esxi2ami_skip_guest_prepare": True} for n in self.names}}}
                    }
                }
            )
        )
        self.extra = self.workdir / "vars.json"
        self.extra.write_text(
            json.dumps(
                {
                    "esxi2ami_hosts": "vms",
                    "vm_to_ami_s3_bucket": BUCKET,
                    "vm_to_ami_poll_interval": self.poll_interval,
                    "vm_to_ami_progress_interval": 5,
                    "vm_to_ami_progress_dir": str(self.workdir),
                }
            )
        )
        return self

    def __exit__(self, *exc):
        for server in (self.aws, self.sim):
            if server is not None:
                server.stop()

    def nfc_log_bytes(self):
        """NFC bytes the simulator served so far (every 'nfc GET ...: sent N bytes' line, and partial ones)."""
        try:
            text = self.sim.log_path.read_text(errors="replace")
        except OSError:
            return None
        return sum(int(m) for m in NFC_ANY.findall(text))

    def run(self, forks=None, timeout=1800):
        """One ansible-playbook run; returns wall time, result and what moved during it."""
        forks = forks or max(len(self.names), 8)
        cmd = [
            str(Path(sys.executable).parent / "ansible-playbook"),
            str(REPO / "playbooks" / "migrate.yml"),
            "-i",
            str(self.inventory),
            "-e",
            "@%s" % self.extra,
            "-f",
            str(forks),
        ]
        env = dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
            ANSIBLE_PYTHON_INTERPRETER=sys.executable,
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_HOST_KEY_CHECKING="False",
            ANSIBLE_RETRY_FILES_ENABLED="False",
            TMPDIR=str(self.workdir),
            # per-task times at the end of the output: where the time goes
            ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
            PROFILE_TASKS_TASK_OUTPUT_LIMIT="8",
            **self.sim.env,
            **self.aws.env,
        )
        self.aws.reset_counters()
        nfc_before = self.nfc_log_bytes()
        started = time.monotonic()
        proc = subprocess.run(
            cmd, cwd=self.workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        wall = time.monotonic() - started
        calls = self.aws.counters()["calls"]
        nfc_after = self.nfc_log_bytes()
        recap = proc.stdout[proc.stdout.rfind("PLAY RECAP") :]
        failed_hosts = [
            line.split()[0] for line in recap.splitlines()[1:] if re.search(r"(failed|unreachable)=[1-9]", line)
        ]
        if proc.returncode != 0 or failed_hosts:
            raise RuntimeError(
                "ansible-playbook failed (rc=%d, failed hosts %s):\n%s\n%s"
                % (proc.returncode, failed_hosts, proc.stdout[-6000:], proc.stderr[-3000:])
            )
        changed = {}
        for line in recap.splitlines()[1:]:
            m = re.match(r"(\S+)\s*:.*changed=(\d+)", line)
            if m:
                changed[m.group(1)] = int(m.group(2))
        images = self.aws.client("ec2").describe_images(Owners=["self"])["Images"]
        # profile_tasks' summary: "<task> ---- 12.34s" lines after the last "====" rule
        slowest = []
        for line in proc.stdout[proc.stdout.rfind("=" * 20) :].splitlines()[1:]:
            m = re.match(r"(.*?)\s*-{3,}\s*([0-9.]+)s\s*$", line)
            if m:
                slowest.append([m.group(1).strip(), float(m.group(2))])
        return {
            "wall_s": round(wall, 2),
            "vms": len(self.names),
            "forks": forks,
            "amis": len(images),
            "changed": changed,
            "nfc_bytes": None if nfc_before is None else nfc_after - nfc_before,
            "s3_put_calls": calls.get("s3:PUT", 0),
            "s3_post_calls": calls.get("s3:POST", 0),
            "import_image_calls": calls.get("ImportImage", 0),
            "api_calls": sum(calls.values()),
            "calls": calls,
            "slowest_tasks": slowest,
        }


def run(vm_counts, disk_mib, task_duration, workdir=None, log=print):
    setup_paths()
    out = {"disk_mib": disk_mib, "task_duration_s": task_duration, "runs": []}
    with tempfile.TemporaryDirectory(prefix="playbook-scale-", dir=workdir) as tmp:
        disk = make_disk(Path(tmp) / "disk.raw", disk_mib)
        for n in vm_counts:
            sub = Path(tmp) / ("n%d" % n)
            sub.mkdir()
            with Migration(sub, disk, n, task_duration) as mig:
                res = mig.run()
            if res["amis"] != n:
                raise RuntimeError("%d VMs but %d AMIs after the run: %s" % (n, res["amis"], res))
            out["runs"].append(res)
            log(
                "  %d VM(s): %7.2f s  (%d AMIs, NFC %s bytes, %d S3 PUTs, %d API calls)"
                % (n, res["wall_s"], res["amis"], res["nfc_bytes"], res["s3_put_calls"], res["api_calls"])
            )
    one = out["runs"][0]["wall_s"] if out["runs"] and out["runs"][0]["vms"] == 1 else None
    for r in out["runs"]:
        r["per_vm_s"] = round(r["wall_s"] / r["vms"], 2)
        if one:
            r["vs_one_vm"] = round(r["wall_s"] / one, 2)
            r["vs_linear"] = round(r["wall_s"] / (one * r["vms"]), 2)
    return out


def print_table(res, log=print):
    log("")
    log(
        "| VMs | forks | wall s | x one VM | / linear (N x one VM) | per VM s | AMIs | NFC bytes | S3 PUT calls | "
        "ImportImage calls | API calls |"
    )
    log("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["runs"]:
        log(
            "| %d | %d | %.2f | %s | %s | %.2f | %d | %s | %d | %d | %d |"
            % (
                r["vms"],
                r["forks"],
                r["wall_s"],
                r.get("vs_one_vm", "n/a"),
                r.get("vs_linear", "n/a"),
                r["per_vm_s"],
                r["amis"],
                r["nfc_bytes"],
                r["s3_put_calls"],
                r["import_image_calls"],
                r["api_calls"],
            )
        )
    log("")
    log("disk %d MiB (random data), simulated import %.0f s per VM" % (res["disk_mib"], res["task_duration_s"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--vms", default="1,4,8", help="comma-separated VM counts (default 1,4,8)")
    ap.add_argument("--disk-mib", type=int, default=64, help="size of the VMs' disk in MiB (default 64)")
    ap.add_argument("--task-duration", type=float, default=20, help="simulated import duration in s (default 20)")
    ap.add_argument("--workdir", help="where the disk and run files go (default: a temp dir)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    try:
        counts = [int(v) for v in args.vms.split(",")]
    except ValueError:
        ap.error("--vms must be comma-separated numbers like 1,4,8, got %r" % args.vms)
    if args.disk_mib < 4 or any(c < 1 for c in counts):
        ap.error("--disk-mib must be at least 4 and every VM count at least 1")
    res = run(counts, args.disk_mib, args.task_duration, args.workdir)
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
