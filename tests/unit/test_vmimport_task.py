"""The import-task state machine: classification, hints, ClientToken, progress file, polling, retries."""

import json
import os
import re
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from ansible_collections.esxi2ami.migrate.plugins.module_utils.vmimport import (
    FAILED,
    KNOWN_MESSAGES,
    RUNNING,
    SUCCEEDED,
    ImportTaskFailed,
    ImportTaskTimeout,
    ProgressFile,
    RetryRule,
    VMImportError,
    call_with_retries,
    classify,
    client_token,
    error_code_and_message,
    hint_for,
    infer_format,
    is_role_propagation_error,
    task_progress,
    task_snapshot_ids,
    wait_for_task,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"


class Clock:
    """A clock the loop under test advances only by sleeping."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def task(status, message=None, progress=None, **extra):
    out = {"ImportTaskId": "import-ami-0123456789abcdef0", "Status": status}
    if message is not None:
        out["StatusMessage"] = message
    if progress is not None:
        out["Progress"] = str(progress)
    out.update(extra)
    return out


def client_error(code, message, operation="ImportImage"):
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


# --- classification --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "t, expected",
    [
        (task("active", "pending", 2), RUNNING),
        (task("active", "preparing ami", 76), RUNNING),
        (task("completed", ImageId="ami-1"), SUCCEEDED),
        (task("completed"), FAILED),  # completed without an image: nothing to use
        (task("deleting", "ClientError: Unknown OS / Missing OS files."), FAILED),
        (task("deleted", "User initiated task cancelation"), FAILED),
        (task("Active"), RUNNING),
        (task("something-new"), RUNNING),
    ],
)
def test_classify(t, expected):
    assert classify(t) == expected


def test_progress_and_snapshots():
    assert task_progress(task("active", "converting", 28)) == 28
    assert task_progress(task("completed")) is None
    t = task(
        "completed", SnapshotDetails=[{"SnapshotId": "snap-1"}, {"DeviceName": "/dev/sdb"}, {"SnapshotId": "snap-2"}]
    )
    assert task_snapshot_ids(t) == ["snap-1", "snap-2"]


# --- hints -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message, fragment",
    [
        ("ClientError: Unknown OS / Missing OS files.", "guest_prepare"),
        ("ClientError: Disk validation failed [Unsupported OVA format]", "first tar member"),
        (
            "ClientError: Disk validation failed [We do not have access to the given resource. Reason 403 Forbidden]",
            "s3_locations",
        ),
        ("ClientError: The given S3 bucket is not local to the region", "region"),
        (
            "The service role vmimport provided does not exist or does not have sufficient permissions for the service "
            "to continue",
            "iam:PassRole",
        ),
        ("ClientError: Unsupported kernel version 5.19.0-custom", "stock kernel"),
        ("clienterror: footers NOT identical", "damaged"),
        ("ClientError: File uses unsupported compression algorithm 0", "stream-optimized"),
    ],
)
def test_hint_for_known_messages(message, fragment):
    assert fragment in hint_for(message)


def test_no_hint_for_unknown_or_empty_messages():
    assert hint_for("ClientError: something nobody has seen") is None
    assert hint_for("") is None and hint_for(None) is None


def test_every_known_message_finds_its_own_hint():
    for fragment, hint in KNOWN_MESSAGES:
        assert hint_for("ClientError: %s." % fragment) == hint, fragment


def test_troubleshooting_doc_shows_exactly_the_modules_table():
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `([^`]+)` \| (.+) \|$", line)
        if m:
            rows.append((m.group(1), m.group(2)))
    assert rows == list(KNOWN_MESSAGES)


# --- ClientToken, formats ----------------------------------------------------------------------------


def test_client_token_is_deterministic_and_changes_with_source_and_attempt():
    req = {"DiskContainers": [{"Format": "OVA", "UserBucket": {"S3Bucket": "b", "S3Key": "k.ova"}}]}
    token = client_token("web01", req)
    assert re.fullmatch(r"[0-9a-f]{64}", token)  # the API allows at most 64 ASCII characters
    assert client_token("web01", json.loads(json.dumps(req))) == token
    assert client_token("web02", req) != token
    other = {"DiskContainers": [{"Format": "OVA", "UserBucket": {"S3Bucket": "b", "S3Key": "k2.ova"}}]}
    assert client_token("web01", other) != token
    assert client_token("web01", req, attempt=1) != token


@pytest.mark.parametrize(
    "key, fmt", [("a/vm.ova", "ova"), ("a/VM.OVA", "ova"), ("d.vmdk", "vmdk"), ("d.vhdx", "vhdx"), ("d.img", "raw")]
)
def test_infer_format(key, fmt):
    assert infer_format(key) == fmt


def test_infer_format_refuses_unknown_extensions():
    with pytest.raises(VMImportError, match="set format to one of ova, vmdk, vhd, vhdx, raw"):
        infer_format("exports/vm.bin")


# --- progress file -----------------------------------------------------------------------------------


def test_progress_file_is_replaced_atomically(tmp_path):
    clock = Clock()
    path = tmp_path / "sub" / "progress.json"
    progress = ProgressFile(str(path), clock=clock)
    progress.task(task("active", "converting", 28), "importing", name="web01")
    first = json.loads(path.read_text())
    assert first["status_message"] == "converting" and first["progress"] == 28 and first["elapsed"] == 0
    assert first["percent"] == 28 and first["phase"] == "importing" and first["name"] == "web01"
    inode = os.stat(path).st_ino
    clock.sleep(12.34)
    progress.task(task("active", "booting", 59), "importing", name="web01", extra={"image_id": None})
    second = json.loads(path.read_text())
    assert second["status_message"] == "booting" and second["elapsed"] == 12.3
    assert os.stat(path).st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert sorted(os.listdir(path.parent)) == ["progress.json"]  # no temp files left behind
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", second["updated"])


def test_progress_file_disabled_writes_nothing(tmp_path):
    assert ProgressFile(None).task(task("active"), "importing") is None
    assert list(tmp_path.iterdir()) == []


# --- polling -----------------------------------------------------------------------------------------


def scripted(*tasks):
    """describe() returning the given tasks in turn (the last one repeats), counting calls."""
    seen = []

    def describe(task_id):
        seen.append(task_id)
        return tasks[min(len(seen) - 1, len(tasks) - 1)]

    return describe, seen


def test_wait_returns_the_completed_task_and_records_progress(tmp_path):
    clock = Clock()
    done = task("completed", ImageId="ami-1")
    describe, seen = scripted(task("active", "pending", 2), task("active", "converting", 28), done)
    progress = ProgressFile(str(tmp_path / "p.json"), clock=clock)
    result = wait_for_task(describe, "import-ami-1", 600, 5, progress=progress, clock=clock, sleep=clock.sleep)
    assert result is done
    assert seen == ["import-ami-1"] * 3
    assert clock.sleeps == [5, 5]
    assert json.loads((tmp_path / "p.json").read_text())["phase"] == "imported"


def test_wait_fails_on_the_first_poll_that_shows_a_failure():
    clock = Clock()
    failed = task("deleting", "ClientError: Unknown OS / Missing OS files.")
    describe, seen = scripted(task("active", "converting", 28), failed, task("deleted", failed["StatusMessage"]))
    with pytest.raises(ImportTaskFailed) as err:
        wait_for_task(describe, "import-ami-1", 7200, 15, clock=clock, sleep=clock.sleep)
    assert len(seen) == 2  # no waiting for "deleted", let alone for the timeout
    assert err.value.task is failed
    assert "guest_prepare" in err.value.hint
    assert "Unknown OS / Missing OS files." in str(err.value) and "import-ami-0123456789abcdef0" in str(err.value)


def test_wait_times_out_with_task_id_status_and_how_to_resume():
    clock = Clock()
    describe, seen = scripted(task("active", "converting", 28))
    with pytest.raises(ImportTaskTimeout) as err:
        wait_for_task(describe, "import-ami-1", 60, 15, name="web01", clock=clock, sleep=clock.sleep)
    text = str(err.value)
    assert "import-ami-0123456789abcdef0" in text and "'converting'" in text and "28%" in text
    assert "keeps running" in text and "same name 'web01'" in text and "state: absent" in text
    assert clock.now - 1000.0 == 60  # never sleeps past the deadline
    assert len(seen) == 5


def test_wait_timeout_zero_looks_once():
    clock = Clock()
    describe, seen = scripted(task("active", "pending", 2))
    with pytest.raises(ImportTaskTimeout):
        wait_for_task(describe, "import-ami-1", 0, 15, clock=clock, sleep=clock.sleep)
    assert len(seen) == 1 and clock.sleeps == []


# --- retries -----------------------------------------------------------------------------------------


def test_error_code_and_message_of_a_real_client_error():
    err = client_error("ResourceCountLimitExceeded", "You have reached the maximum number of active tasks")
    assert error_code_and_message(err) == (
        "ResourceCountLimitExceeded",
        "You have reached the maximum number of active tasks",
    )
    assert error_code_and_message(ValueError("boom")) == (None, "boom")


def test_role_propagation_message():
    msg = "The service role vmimport does not exist or does not have sufficient permissions for the service to continue"
    assert is_role_propagation_error("InvalidParameter", msg)
    assert not is_role_propagation_error("InvalidParameter", "The parameter Format is invalid")


def test_retries_until_success_with_growing_jittered_pauses():
    clock = Clock()
    rule = RetryRule("role propagation", delay=2, max_delay=10, budget=60)
    failures = [client_error("InvalidParameter", "The service role vmimport does not exist or ...")] * 4
    calls, retried = [], []

    def func():
        calls.append(clock.now)
        if failures:
            raise failures.pop()
        return "started"

    result = call_with_retries(
        func,
        lambda exc: rule,
        clock=clock,
        sleep=clock.sleep,
        rand=lambda: 1.0,
        on_retry=lambda r, e, p: retried.append(p),
    )
    assert result == "started" and len(calls) == 5
    assert clock.sleeps == [2, 4, 8, 10] == retried  # capped at max_delay


def test_jitter_keeps_at_least_half_the_delay():
    clock = Clock()
    errors = [client_error("ResourceCountLimitExceeded", "limit")] * 3

    def func():
        if errors:
            raise errors.pop()
        return True

    call_with_retries(
        func, lambda exc: RetryRule("slot", delay=4, budget=100), clock=clock, sleep=clock.sleep, rand=lambda: 0.0
    )
    assert clock.sleeps == [2, 4, 8]


def test_gives_up_when_the_budget_is_spent_and_raises_the_last_error():
    clock = Clock()
    rule = RetryRule("slot", delay=5, max_delay=5, budget=12)
    err = client_error("ResourceCountLimitExceeded", "limit")

    def func():
        raise err

    with pytest.raises(ClientError) as raised:
        call_with_retries(func, lambda exc: rule, clock=clock, sleep=clock.sleep, rand=lambda: 1.0)
    assert raised.value is err
    assert clock.sleeps == [5, 5, 2]  # never sleeps past the budget
    assert clock.now - 1000.0 == 12


def test_other_errors_are_raised_at_once():
    clock = Clock()
    err = client_error("InvalidParameter", "The parameter Format is invalid")

    def func():
        raise err

    def rule_for(exc):
        code, message = error_code_and_message(exc)
        return RetryRule("role") if is_role_propagation_error(code, message) else None

    with pytest.raises(ClientError) as raised:
        call_with_retries(func, rule_for, clock=clock, sleep=clock.sleep)
    assert raised.value is err and clock.sleeps == []


def test_default_progress_path_is_under_ansible_remote_tmp(monkeypatch):
    from ansible_collections.esxi2ami.migrate.plugins.module_utils.vmimport import default_progress_path

    monkeypatch.setenv("HOME", "/home/alice")
    assert (
        default_progress_path(None, "web01") == "/home/alice/.ansible/tmp/esxi2ami.migrate/ec2_import_image-web01.json"
    )
    assert (
        default_progress_path("/var/tmp/a", "web 01/../x")
        == "/var/tmp/a/esxi2ami.migrate/ec2_import_image-web_01_.._x.json"
    )


def test_progress_file_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    progress = ProgressFile(str(blocker / "p.json"))
    with pytest.raises(VMImportError, match="progress_file .* cannot be written.*empty string to write none"):
        progress.write(phase="checking")
    # after a first good write, a failing one is recorded, not raised: progress must not abort an import
    path = tmp_path / "sub" / "p.json"
    progress = ProgressFile(str(path))
    assert progress.write(phase="checking")["phase"] == "checking"
    path.parent.rename(tmp_path / "moved")
    (tmp_path / "sub").write_text("now a file")
    assert progress.write(phase="importing") is None
    assert "cannot be written" in progress.error
