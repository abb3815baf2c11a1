"""`benchmarks/run.py --small` runs every benchmark end to end on the simulators and writes its results.

Timings are reported by the benchmarks, never asserted here: this checks that the one command runs,
that each benchmark produced the measurements the README's tables are made of, and the facts that do
not depend on the machine's speed (bytes written locally by a streaming export, bytes moved by a
re-run, API calls per poll, every VM migrated).
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = ("export_stream", "upload_sink", "import_wait", "playbook_scale", "rerun")


def test_run_small_writes_every_benchmark_result(tmp_path):
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--small", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "small"
    for key in ("date", "nproc", "cpu", "ram_gib", "python", "moto", "boto3", "ansible-core"):
        assert report["machine"].get(key), (key, report["machine"])
    results = report["results"]
    assert sorted(results) == sorted(BENCHMARKS)
    for name in BENCHMARKS:
        entries = results[name] if isinstance(results[name], list) else [results[name]]
        assert entries and all("error" not in e for e in entries), (name, entries)

    (export,) = results["export_stream"]
    modes = {r["mode"]: r for r in export["results"]}
    assert sorted(modes) == ["s3_only", "staged", "streaming", "vsphere_only"]
    for r in modes.values():
        assert r["wall_s"] > 0 and r["peak_rss_mib"] > 0 and r["size"] > 0, r
    assert modes["streaming"]["local_bytes"] == 0 and modes["streaming"]["io_write_bytes"] == 0
    assert modes["staged"]["local_bytes"] == modes["staged"]["size"] > 0
    assert "streaming_vs_slower_half" in export and "streaming_vs_staged" in export

    upload = results["upload_sink"]
    assert sorted(upload["ways"]) == ["sink", "transfer", "transfer_same"]
    for way in upload["ways"].values():
        assert len(way["wall_s"]) == upload["rounds"] and way["median_mb_s"] > 0 and way["s3_put_calls"] > 1, way
    assert upload["sink_vs_transfer"] > 0 and upload["sink_vs_transfer_parts_only"] > 0

    wait = results["import_wait"]
    assert {t["kind"] for t in wait["trials"]} == {"completes", "fails"}
    assert wait["valid_trials"] == len(wait["trials"]), wait["trials"]
    for t in wait["trials"]:
        assert t["latency_s"] is not None and t["seen_after_s"] is not None, t
        assert t["start_calls"].get("ImportImage") == 1, t
    # one DescribeImportImageTasks per poll while the task is active: a count, not a time
    assert wait["polls_counted"] > 0 and wait["max_calls_per_poll"] == 1, wait["trials"]

    scale = results["playbook_scale"]
    assert [r["vms"] for r in scale["runs"]] == [1, 4]
    for r in scale["runs"]:
        assert r["amis"] == r["vms"] and r["import_image_calls"] == r["vms"], r
        assert r["nfc_bytes"] > 0 and r["s3_put_calls"] >= r["vms"] and r["wall_s"] > 0, r
    assert "vs_linear" in scale["runs"][1]

    rerun = results["rerun"]
    assert rerun["first_run"]["nfc_bytes"] > 0 and rerun["first_run"]["import_image_calls"] == 1
    assert rerun["rerun_bytes_moved"] == 0 and rerun["rerun_nfc_bytes"] == 0, rerun
    assert rerun["rerun"]["s3_put_calls"] == 0 and rerun["rerun"]["import_image_calls"] == 0, rerun["rerun"]
    assert rerun["amis_after_rerun"] == 1 and rerun["rerun_wall_s"] > 0

    measures = {(t["benchmark"].split()[0], t["measure"]) for t in report["targets"]}
    for expected in (
        ("export_stream", "streaming / slower half alone"),
        ("export_stream", "streaming peak RSS MiB"),
        ("export_stream", "streaming local disk bytes"),
        ("upload_sink", "sink / TransferManager throughput"),
        ("import_wait", "task end -> module return, max s"),
        ("import_wait", "API calls per poll, max"),
        ("playbook_scale", "wall / (N x one VM)"),
        ("rerun", "bytes moved"),
        ("rerun", "wall s"),
    ):
        assert expected in measures, (expected, sorted(measures))
    assert all(isinstance(t["met"], bool) and t["measured"] is not None for t in report["targets"])
    assert "| benchmark | measure | measured | target | met |" in proc.stdout
