#!/usr/bin/env python
"""Run every benchmark on the simulators, write one JSON file and print a table of targets.

    .venv/bin/python benchmarks/run.py            # full sizes, by hand (about half an hour on 2 cores)
    .venv/bin/python benchmarks/run.py --small    # CI size (a few minutes): proves it all runs, numbers are rough
    .venv/bin/python benchmarks/run.py --only upload_sink,import_wait --out /tmp/bench.json

Each benchmark is its own script in this directory (run it alone for details) and runs here in its
own process, one after the other, so they do not compete for the CPU:

  export_stream   streaming vs staged OVA export vs each half alone (wall, RSS, local disk)
  upload_sink     our multipart sink vs boto3's TransferManager, same data and endpoint
  import_wait     ec2_import_image: task end -> module return, API calls per poll
  playbook_scale  playbooks/migrate.yml for 1, 4, 8 VMs with the same disk
  rerun           idempotent re-run of a finished migration: wall time and bytes moved

Results: ``--out`` (default benchmarks/results/latest.json; for --small .build/benchmarks/latest-small.json,
so a quick run does not replace the published numbers) with the machine, each benchmark's own results
and the targets; timings are reported, never asserted.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "latest.json"
# --small results are rough: kept out of the committed file, under the git-ignored .build/
DEFAULT_SMALL_OUT = HERE.parent / ".build" / "benchmarks" / "latest-small.json"
MIB = 1 << 20

# name -> (small args, full args); export_stream gets one run per size (the issue asks for 1 GiB and 4 GiB).
PLANS = {
    "export_stream": ([["--size-mib", "32"]], [["--size-mib", "1024"], ["--size-mib", "4096"]]),
    "upload_sink": (["--size-mib", "64", "--rounds", "2"], ["--size-mib", "1024", "--rounds", "3"]),
    "import_wait": (
        ["--task-duration", "6", "--poll-interval", "1", "--trials", "1"],
        ["--task-duration", "20", "--poll-interval", "5", "--trials", "3"],
    ),
    "playbook_scale": (
        ["--vms", "1,4", "--disk-mib", "8", "--task-duration", "4"],
        ["--vms", "1,4,8", "--disk-mib", "64", "--task-duration", "20"],
    ),
    "rerun": (
        ["--vms", "1", "--disk-mib", "8", "--task-duration", "4"],
        ["--vms", "4", "--disk-mib", "64", "--task-duration", "20"],
    ),
}


def machine():
    """What the numbers were measured on."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        with open("/proc/meminfo") as f:
            kib = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:"))
        info["ram_gib"] = round(kib / (1 << 20), 1)
        info["loadavg_at_start"] = os.getloadavg()[0]
    except (OSError, StopIteration, ValueError):
        pass
    for dist in ("moto", "boto3", "botocore", "ansible-core", "pyvmomi"):
        try:
            from importlib.metadata import version  # noqa: PLC0415

            info[dist] = version(dist)
        except Exception:  # noqa: BLE001 - report what is there
            info[dist] = None
    return info


def run_one(name, args, log):
    """Run benchmarks/<name>.py with args and --json; returns its results (or an error entry)."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, str(HERE / ("%s.py" % name)), *args, "--json", str(out)]
        log("== %s %s" % (name, " ".join(args)))
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, check=False)
        took = round(time.monotonic() - started, 1)
        if proc.returncode != 0 or not out.exists():
            log(
                "   FAILED (rc=%d) after %.1f s:\n%s\n%s"
                % (proc.returncode, took, proc.stdout[-3000:], proc.stderr[-3000:])
            )
            return {"error": "exit code %d" % proc.returncode, "stderr_tail": proc.stderr[-3000:], "took_s": took}
        log("   done in %.1f s" % took)
        res = json.loads(out.read_text())
        res["took_s"] = took
        res["args"] = args
        res["output"] = proc.stdout
        return res


def _by_mode(export):
    return {r["mode"]: r for r in export.get("results", [])}


def targets(results):
    """[(benchmark, measure, measured, target, met)] from every benchmark's results."""
    rows = []
    for export in results.get("export_stream", []):
        if "error" in export:
            rows.append(("export_stream", "run", export["error"], "runs", False))
            continue
        size = "%d MiB" % export.get("size_mib", 0)
        modes = _by_mode(export)
        ratio = export.get("streaming_vs_slower_half")
        rows.append(
            (
                "export_stream " + size,
                "streaming / slower half alone",
                ratio,
                "<= 1.15",
                ratio is not None and ratio <= 1.15,
            )
        )
        staged = export.get("streaming_vs_staged")
        rows.append(
            (
                "export_stream " + size,
                "streaming / staged",
                staged,
                "< 1 (clearly below)",
                staged is not None and staged < 1,
            )
        )
        streaming = modes.get("streaming", {})
        rss = streaming.get("peak_rss_mib")
        rows.append(("export_stream " + size, "streaming peak RSS MiB", rss, "<= 256", rss is not None and rss <= 256))
        local = streaming.get("io_write_bytes")
        if local is None:
            local = streaming.get("local_bytes")
        rows.append(("export_stream " + size, "streaming local disk bytes", local, "0", local == 0))
    up = results.get("upload_sink")
    if up is not None:
        if "error" in up:
            rows.append(("upload_sink", "run", up["error"], "runs", False))
        else:
            rows.append(
                (
                    "upload_sink %d MiB" % up["size_mib"],
                    "sink / TransferManager throughput",
                    up["sink_vs_transfer"],
                    ">= 0.95",
                    up["sink_vs_transfer"] >= 0.95,
                )
            )
    wait = results.get("import_wait")
    if wait is not None:
        if "error" in wait:
            rows.append(("import_wait", "run", wait["error"], "runs", False))
        else:
            label = "import_wait P=%gs" % wait["poll_interval_s"]
            rows.append(
                (
                    label,
                    "task end -> module return, max s",
                    wait["max_latency_s"],
                    "<= %g" % wait["poll_interval_s"],
                    wait["latency_met"],
                )
            )
            rows.append((label, "API calls per poll, max", wait["max_calls_per_poll"], "1", wait["calls_per_poll_met"]))
    scale = results.get("playbook_scale")
    if scale is not None:
        if "error" in scale:
            rows.append(("playbook_scale", "run", scale["error"], "runs", False))
        else:
            for r in scale["runs"]:
                if r["vms"] > 1 and "vs_linear" in r:
                    rows.append(
                        (
                            "playbook_scale %d VMs" % r["vms"],
                            "wall / (N x one VM)",
                            r["vs_linear"],
                            "<= 0.5 (far below linear)",
                            r["vs_linear"] <= 0.5,
                        )
                    )
    rerun = results.get("rerun")
    if rerun is not None:
        if "error" in rerun:
            rows.append(("rerun", "run", rerun["error"], "runs", False))
        else:
            label = "rerun %d VMs" % rerun["vms"]
            rows.append((label, "bytes moved", rerun["rerun_bytes_moved"], "0", rerun["bytes_met"]))
            rows.append((label, "wall s", rerun["rerun_wall_s"], "< 30", rerun["time_met"]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="CI sizes: quick, numbers are rough")
    size.add_argument("--full", action="store_true", help="the real sizes (default)")
    ap.add_argument("--only", help="comma-separated subset of: %s" % ", ".join(PLANS))
    ap.add_argument(
        "--out",
        help="results file (default benchmarks/results/latest.json; with --small .build/benchmarks/latest-small.json)",
    )
    args = ap.parse_args(argv)
    names = list(PLANS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(PLANS))
        if unknown:
            ap.error("--only: unknown benchmark(s) %s; choose from %s" % (", ".join(unknown), ", ".join(PLANS)))
    mode = "small" if args.small else "full"
    log = print
    report = {"mode": mode, "machine": machine(), "results": {}}
    started = time.monotonic()
    for name in names:
        plan = PLANS[name][0 if args.small else 1]
        if name == "export_stream":
            report["results"][name] = [run_one(name, a, log) for a in plan]
        else:
            report["results"][name] = run_one(name, plan, log)
    report["took_s"] = round(time.monotonic() - started, 1)
    report["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    rows = targets(report["results"])
    report["targets"] = [
        {"benchmark": b, "measure": m, "measured": v, "target": t, "met": bool(ok)} for b, m, v, t, ok in rows
    ]
    out = Path(args.out or (DEFAULT_SMALL_OUT if args.small else DEFAULT_OUT))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    log("")
    for name in names:
        res = report["results"][name]
        for r in res if isinstance(res, list) else [res]:
            if r.get("output"):
                log("### %s %s" % (name, " ".join(r.get("args", []))))
                log(r["output"].rstrip())
                log("")
    m = report["machine"]
    log(
        "Machine: %s x %s, %s GiB RAM, Python %s, moto %s, %s (load %.1f -> %.1f)"
        % (
            m.get("nproc"),
            m.get("cpu"),
            m.get("ram_gib"),
            m["python"],
            m["moto"],
            m["date"],
            m.get("loadavg_at_start", 0),
            m["loadavg_at_end"],
        )
    )
    log("")
    log("| benchmark | measure | measured | target | met |")
    log("|---|---|---:|---|---|")
    for b, meas, v, t, ok in rows:
        log("| %s | %s | %s | %s | %s |" % (b, meas, v, t, "yes" if ok else "**no**"))
    log("")
    log("%s run in %.0f s; results in %s" % (mode, report["took_s"], out))
    failed = [
        n
        for n in names
        if any(
            "error" in r
            for r in (report["results"][n] if isinstance(report["results"][n], list) else [report["results"][n]])
        )
    ]
    if failed:
        log("benchmarks that did not run to the end: %s" % ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
