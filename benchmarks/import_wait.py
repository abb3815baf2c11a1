#!/usr/bin/env python
"""Import wait: how soon ec2_import_image returns after the task ends, and how many API calls a poll costs.

Starts the moto + VM Import simulator (tests/simulators/vmimport) with ``--task-duration`` D, puts a
good OVA and one the service rejects (at ``converting``, half-way through D) in S3, and for each
trial:

1. starts an import task named like the module's (``ImportImage`` with the ``Name`` tag), noting the
   wall-clock instant the simulator created it, so the instant it completes (created + D) or fails
   (created + D/2) is known to within the call's round trip;
2. after a random delay in [0, poll interval) (so the trials sample every phase of the poll cycle)
   runs a real ``ansible-playbook`` with one ``esxi2ami.migrate.ec2_import_image`` task (``wait: true``,
   ``poll_interval`` P) that finds that task by name and waits for it;
3. reads every API call the module made from the simulator's counters, sampled every 25 ms.

Reported per trial: latency = the task's end in the simulator -> the task result reaching
ansible-playbook (json callback's end time), split into "seen" (end -> the poll that saw it) and
"finish" (that poll -> result: DescribeImages, tagging, ...); and the API calls of every poll
while the task was active. Targets: latency <= P, one API call per poll.

    .venv/bin/python benchmarks/import_wait.py                    # D=20 s, P=5 s, 3 trials each (by hand)
    .venv/bin/python benchmarks/import_wait.py --task-duration 8 --poll-interval 1 --trials 1
"""

import argparse
import datetime
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_paths import setup_paths

MIB = 1 << 20
BUCKET = "bench-import"
SAMPLE_S = 0.025


class CallSampler(threading.Thread):
    """Polls the simulator's counters; records (time, action, new calls) for every increase."""

    def __init__(self, aws):
        super().__init__(daemon=True)
        self.aws = aws
        self.events = []
        self.times = []
        self._stop_event = threading.Event()

    def run(self):
        last = self.aws.counters()["calls"]
        while not self._stop_event.is_set():
            now_calls = self.aws.counters()["calls"]
            now = time.time()
            self.times.append(now)
            for action, n in now_calls.items():
                if n > last.get(action, 0):
                    self.events.append((now, action, n - last.get(action, 0)))
            last = now_calls
            self._stop_event.wait(SAMPLE_S)

    def stop(self):
        self._stop_event.set()
        self.join()


def bursts(events, gap):
    """Group call events closer than ``gap`` seconds: one group per poll (or per step after the wait)."""
    groups = []
    for when, action, n in sorted(events):
        if groups and when - groups[-1]["last"] < gap:
            groups[-1]["last"] = when
            groups[-1]["calls"][action] = groups[-1]["calls"].get(action, 0) + n
        else:
            groups.append({"first": when, "last": when, "calls": {action: n}})
    return groups


def _utc(stamp):
    return datetime.datetime.fromisoformat(stamp.rstrip("Z")).replace(tzinfo=datetime.timezone.utc).timestamp()


def trial(aws, kind, index, key, duration, poll, fail_fraction, run_playbook):
    name = "bench-wait-%s-%d" % (kind, index)
    # A task duration off the poll grid by a random fraction of P, so the trials sample every phase of the cycle.
    duration = round(duration + random.uniform(0, poll), 3)  # noqa: S311 - not crypto
    aws.configure(task_duration=duration)
    sampler = CallSampler(aws)
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="import-wait-") as tmp:
        res = run_playbook(
            [
                {
                    "name": "wait for the import",
                    "esxi2ami.migrate.ec2_import_image": {
                        "name": name,
                        "s3_url": "s3://%s/%s" % (BUCKET, key),
                        "wait": True,
                        "wait_timeout": int(duration * 3 + 60),
                        "poll_interval": poll,
                        "progress_file": str(Path(tmp) / "progress.json"),
                    },
                    "ignore_errors": kind == "fails",
                }
            ],
            env=aws.env,
        )
    sampler.stop()
    result = res.task("wait for the import")
    # ImportImage as the simulator saw it: between the last sample without it and the first with it.
    started = next(e for e in sampler.events if e[1] == "ImportImage")
    previous = max((t for t in sampler.times if t < started[0]), default=started[0])
    created = (started[0] + previous) / 2
    ends_at = created + duration * (1.0 if kind == "completes" else fail_fraction)
    # the json callback stamps the end of the task when its result reaches ansible-playbook
    task_entry = next(t for p in res.data["plays"] for t in p["tasks"] if t["task"]["name"] == "wait for the import")
    returned = _utc(task_entry["task"]["duration"]["end"])
    ok = (kind == "completes" and not result.get("failed")) or (kind == "fails" and result.get("failed"))
    if not ok:
        raise RuntimeError("trial %s: unexpected result %s" % (name, json.dumps(result)[:2000]))
    # Start-up: every call up to ImportImage and the describes right after it (the module's look-up by name, the
    # source check, ImportImage, DescribeImportImageTasks of the new task and the wait's first poll, which does not
    # sleep first); on a loaded machine these can be spread out, so they are cut by time, not by gaps.
    start_cut = started[0] + poll / 2
    start_calls = {}
    for when, action, n in sampler.events:
        if when <= start_cut:
            start_calls[action] = start_calls.get(action, 0) + n
    groups = bursts([e for e in sampler.events if e[0] > start_cut], gap=poll / 2)
    # The poll that saw the end: the last group with DescribeImportImageTasks before the result came back (then
    # DescribeImages, tagging... when it completed); the groups between start-up and it are polls of an active task.
    polls = [g for g in groups if "DescribeImportImageTasks" in g["calls"] and g["first"] <= returned]
    seen = polls[-1] if polls else None
    waiting = [g for g in groups if seen is not None and g["first"] < seen["first"]]
    out = {
        "kind": kind,
        "task_id": result.get("import_task_id"),
        "task_duration_s": duration,
        "created_uncertainty_s": round((started[0] - previous) / 2, 3),
        "latency_s": round(returned - ends_at, 2),
        "seen_after_s": round(seen["first"] - ends_at, 2) if seen else None,
        "detected_within_poll": seen is not None and seen["first"] - ends_at <= poll + SAMPLE_S,
        "finish_s": round(returned - seen["first"], 2) if seen else None,
        "polls_while_active": len(waiting),
        "start_calls": start_calls,
        "calls_per_poll_while_active": [sum(g["calls"].values()) for g in waiting],
        "after_end_calls": seen["calls"] if seen else {},
        "module_elapsed_s": result.get("elapsed"),
    }
    out["valid"] = len(waiting) >= 2  # the module was polling an active task before it ended
    return out


def run(task_duration, poll_interval, trials, log=print):
    setup_paths()
    from tests.integration.playbook import run_playbook  # noqa: PLC0415
    from tests.simulators.vmimport.fixtures import create_vmimport_role  # noqa: PLC0415
    from tests.simulators.vmimport.launcher import MotoVmImport  # noqa: PLC0415
    from tests.simulators.vmimport.ova_builder import build_ova, make_raw_disk  # noqa: PLC0415
    from tests.simulators.vmimport.ova_checks import STAGE_CONVERTING  # noqa: PLC0415
    from tests.simulators.vmimport.vmimport_ext import FAIL_AT  # noqa: PLC0415

    results = []
    with tempfile.TemporaryDirectory(prefix="import-wait-") as tmp, MotoVmImport(task_duration=task_duration) as aws:
        s3 = aws.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        create_vmimport_role(aws.client("iam"), BUCKET)
        keys = {}
        for kind, fail in (("completes", None), ("fails", "Unknown OS / Missing OS files.")):
            raw = make_raw_disk(Path(tmp) / ("%s.raw" % kind), 8 * MIB, fail_message=fail)
            ova = build_ova(Path(tmp) / ("%s.ova" % kind), [raw], name=kind)
            keys[kind] = "%s.ova" % kind
            s3.upload_file(str(ova), BUCKET, keys[kind])
        for index in range(trials):
            for kind in ("completes", "fails"):
                r = trial(
                    aws,
                    kind,
                    index,
                    keys[kind],
                    task_duration,
                    poll_interval,
                    FAIL_AT[STAGE_CONVERTING],
                    run_playbook,
                )
                results.append(r)
                log(
                    "  %-9s latency %5.2f s (seen %s s after the end + finish %s s), %d polls while active, "
                    "calls/poll %s"
                    % (
                        kind,
                        r["latency_s"],
                        r["seen_after_s"],
                        r["finish_s"],
                        r["polls_while_active"],
                        r["calls_per_poll_while_active"],
                    )
                )
    valid = [r for r in results if r["valid"]]
    per_poll = [c for r in valid for c in r["calls_per_poll_while_active"]]
    out = {
        "task_duration_s": task_duration,
        "poll_interval_s": poll_interval,
        "trials": results,
        "valid_trials": len(valid),
        "max_latency_s": max((r["latency_s"] for r in valid), default=None),
        "median_latency_s": statistics.median([r["latency_s"] for r in valid]) if valid else None,
        "max_finish_s": max((r["finish_s"] for r in valid if r["finish_s"] is not None), default=None),
        "max_calls_per_poll": max(per_poll, default=None),
        "polls_counted": len(per_poll),
    }
    out["latency_met"] = out["max_latency_s"] is not None and out["max_latency_s"] <= poll_interval
    out["calls_per_poll_met"] = bool(per_poll) and set(per_poll) == {1}
    out["max_seen_after_s"] = max((r["seen_after_s"] for r in valid if r["seen_after_s"] is not None), default=None)
    out["detection_met"] = bool(valid) and all(r["detected_within_poll"] for r in valid)
    return out


def print_table(res, log=print):
    log("")
    log(
        "| trial | ends | latency s | seen after end s | finish s | polls while active | API calls per poll "
        "| start-up calls (look-up, ImportImage, first poll) | calls of the poll that saw the end, and after |"
    )
    log("|---|---|---:|---:|---:|---:|---|---|---|")
    for i, r in enumerate(res["trials"]):
        log(
            "| %d%s | %s | %.2f | %s | %s | %d | %s | %s | %s |"
            % (
                i + 1,
                "" if r["valid"] else " (not polled before the end: ignored)",
                r["kind"],
                r["latency_s"],
                r["seen_after_s"],
                r["finish_s"],
                r["polls_while_active"],
                ", ".join(str(c) for c in r["calls_per_poll_while_active"]),
                json.dumps(r["start_calls"], sort_keys=True),
                json.dumps(r["after_end_calls"], sort_keys=True),
            )
        )
    log("")
    log(
        "poll interval %.1f s: max latency %s s (target <= poll interval: %s; the end was seen by a poll at most "
        "%s s after it: %s), max API calls per poll %s over %d polls (target 1: %s)"
        % (
            res["poll_interval_s"],
            res["max_latency_s"],
            "met" if res["latency_met"] else "MISSED",
            res["max_seen_after_s"],
            "within one interval" if res["detection_met"] else "LATER than one interval",
            res["max_calls_per_poll"],
            res["polls_counted"],
            "met" if res["calls_per_poll_met"] else "MISSED",
        )
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--task-duration", type=float, default=20, help="simulated import duration D in s (default 20)")
    ap.add_argument("--poll-interval", type=float, default=5, help="the module's poll_interval P in s (default 5)")
    ap.add_argument("--trials", type=int, default=3, help="trials per outcome (completes, fails; default 3)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.task_duration < 4 * args.poll_interval:
        ap.error("--task-duration must be at least 4 x --poll-interval so the module polls an active task")
    res = run(args.task_duration, args.poll_interval, args.trials)
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
