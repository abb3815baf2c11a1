"""The progress line job_progress prints, from real progress-file contents of the export and import modules."""

from ansible_collections.esxi2ami.migrate.plugins.action.job_progress import format_progress, human_bytes


def test_export_line_has_phase_percent_bytes_rate_and_eta():
    data = {
        "phase": "exporting",
        "percent": 41.4,
        "bytes": 3435973837,
        "total_bytes": 8482560000,
        "rate": 92378000,
        "eta": 54.2,
    }
    assert format_progress("export", data) == "export: exporting 41% 3.2 GiB of ~7.9 GiB 88.1 MiB/s ETA 54s"


def test_import_line_has_the_status_message_and_percent():
    data = {"phase": "importing", "status": "active", "status_message": "converting", "percent": 28}
    assert format_progress("import", data) == "import: importing converting 28%"


def test_an_empty_or_missing_progress_file_still_gives_a_line():
    assert format_progress("export", {}) == "export:"


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 << 20, 3 << 40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 MiB",
        "3.0 TiB",
    ]
