"""MultipartSink with a real boto3 client and moto's S3 in process (moto stands in at botocore's HTTP edge).

Faults are injected at the same edge with botocore's before-send hook: a response with a 500 or a
dropped connection, exactly what the client would see from a real endpoint.
"""

import os
import threading
import time

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws

from ansible_collections.esxi2ami.migrate.plugins.module_utils import s3_stream

MIB = 1 << 20
PART = 5 * MIB
BUCKET = "stream-test"


@pytest.fixture
def s3(monkeypatch):
    for var in ("AWS_PROFILE", "AWS_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        client = boto3.client(
            "s3",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1}),  # our own per-part retries are under test
        )
        client.create_bucket(Bucket=BUCKET)
        yield client


def _object(s3, key):
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _uploads(s3):
    return s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def _sink(s3, key="k", **kw):
    kw.setdefault("sleep", lambda s: None)
    return s3_stream.MultipartSink(s3, BUCKET, key, PART, **kw).start()


def test_part_size_fits_10000_parts():
    assert s3_stream.choose_part_size(4 << 30) == (16 * MIB, None)
    size, note = s3_stream.choose_part_size(1 << 40)
    assert size % MIB == 0 and (1 << 40) / size <= 9000 and note is None
    size, note = s3_stream.choose_part_size(1 << 40, requested=16 * MIB)
    assert (1 << 40) / size <= 9000 and "raised" in note
    assert s3_stream.choose_part_size(1 << 30, requested=MIB) == (
        5 * MIB,
        "part_size raised to the S3 minimum of 5 MiB",
    )
    assert s3_stream.choose_part_size(1 << 30, requested=64 * MIB) == (64 * MIB, None)
    with pytest.raises(s3_stream.S3StreamError, match="5 TiB"):
        s3_stream.choose_part_size(60 << 40)


@pytest.mark.parametrize("part_size", [PART, 8 * MIB])
def test_prefix_goes_first_and_held_regions_are_patched(s3, part_size):
    """Holds in part 1, across the part 1/2 and 2/3 boundaries, and in the last part (part 1 holds 5 MiB of tail)."""
    tail = bytearray(os.urandom(PART + part_size * 3 + 12345))
    sink = s3_stream.MultipartSink(
        s3,
        BUCKET,
        "k",
        part_size,
        extra_args={"Metadata": {"vm": "x"}, "ServerSideEncryption": "AES256"},
        sleep=lambda s: None,
    ).start()
    holds = [(100, 512), (PART - 200, 512), (PART + part_size - 300, 512), (PART + 3 * part_size + 1000, 512)]
    pos = 0
    for off, length in holds:
        sink.write(bytes(tail[pos:off]))
        sink.hold(off, length)
        sink.write(b"\0" * length)
        pos = off + length
    sink.write(bytes(tail[pos:]))
    for off, length in reversed(holds):  # patch order does not matter
        sink.patch(off, bytes(tail[off : off + length]))
    result = sink.finish(b"PREFIX" * 1000)
    assert result["parts"] == 5 and result["part_size"] == part_size
    assert _object(s3, "k") == b"PREFIX" * 1000 + bytes(tail)
    head = s3.head_object(Bucket=BUCKET, Key="k")
    assert head["Metadata"] == {"vm": "x"} and head["ServerSideEncryption"] == "AES256"
    assert head["ETag"] == result["etag"]
    # Part 1 = prefix + 5 MiB of tail, then full parts, then the rest (part sizes as S3 reports them).
    sizes = [s3.head_object(Bucket=BUCKET, Key="k", PartNumber=n)["ContentLength"] for n in range(1, 6)]
    assert sizes == [6000 + PART] + [part_size] * 3 + [12345]
    assert _uploads(s3) == []
    # The upload declared CRC32: every part carried one that S3 checked, and the object keeps a checksum
    # (S3 reports a composite "<crc>-5"; moto the whole object's CRC32). Without it there is none.
    assert s3.head_object(Bucket=BUCKET, Key="k", ChecksumMode="ENABLED").get("ChecksumCRC32")


def test_small_stream_is_one_part(s3):
    sink = _sink(s3)
    sink.write(b"tail")
    assert sink.finish(b"head")["parts"] == 1
    assert _object(s3, "k") == b"headtail"


def test_tail_of_exactly_one_part(s3):
    sink = _sink(s3)
    sink.write(b"x" * PART)
    assert sink.finish(b"h")["parts"] == 1
    assert _object(s3, "k") == b"h" + b"x" * PART


class _Raw:
    """The raw body of a canned HTTP response, as botocore reads it."""

    def __init__(self, body):
        self.body = body

    def stream(self, **_):
        yield self.body


def _fail(s3, operation, times, status=500, parts=None):
    """Fail the next ``times`` requests of ``operation`` (for PartNumber in ``parts``) at the HTTP edge."""
    state = {"left": times, "seen": 0}
    lock = threading.Lock()

    def hook(request, **_):
        if parts is not None and not any("partNumber=%d" % p in request.url for p in parts):
            return None
        with lock:
            state["seen"] += 1
            if state["left"] <= 0:
                return None
            state["left"] -= 1
        if status is None:
            raise EndpointConnectionError(endpoint_url=request.url)
        code = "AccessDenied" if status == 403 else "InternalError"
        return AWSResponse(request.url, status, {}, _Raw(b"<Error><Code>%s</Code></Error>" % code.encode()))

    s3.meta.events.register("before-send.s3.%s" % operation, hook)
    return state


def test_each_part_is_retried(s3):
    state = _fail(s3, "UploadPart", times=3, parts=[2])
    data = os.urandom(PART * 2 + 10)
    sink = _sink(s3, retries=5)
    sink.write(data)
    sink.finish(b"")
    assert state["left"] == 0
    assert _object(s3, "k") == data


def test_connection_errors_are_retried_too(s3):
    _fail(s3, "UploadPart", times=2, status=None, parts=[3])
    data = os.urandom(PART * 3)
    sink = _sink(s3)
    sink.write(data)
    sink.finish(b"")
    assert _object(s3, "k") == data


def test_a_part_that_keeps_failing_aborts_the_upload(s3):
    _fail(s3, "UploadPart", times=100, parts=[2])
    sink = _sink(s3, retries=2)
    with pytest.raises(s3_stream.S3StreamError, match=r"part 2 .* failed after 3 attempt"):
        sink.write(os.urandom(PART * 3))
        sink.finish(b"")
    sink.abort()
    assert _uploads(s3) == []
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_access_denied_is_not_retried(s3):
    state = _fail(s3, "UploadPart", times=100, status=403, parts=[2])
    sink = _sink(s3, retries=5)
    with pytest.raises(s3_stream.S3StreamError, match="failed after 1 attempt"):
        sink.write(os.urandom(PART * 2))
        sink.finish(b"")
    sink.abort()
    assert state["seen"] == 1
    assert _uploads(s3) == []


def test_upload_aborted_from_outside_fails_cleanly(s3):
    sink = _sink(s3)
    sink.write(os.urandom(PART + 1))
    s3.abort_multipart_upload(Bucket=BUCKET, Key="k", UploadId=sink.upload_id)
    with pytest.raises(s3_stream.S3StreamError, match=r"part \d of s3://stream-test/k failed"):
        sink.write(os.urandom(PART))
        sink.finish(b"")
    sink.abort()  # NoSuchUpload on abort is fine: nothing is left either way
    assert _uploads(s3) == []


def test_missing_bucket_is_named(s3):
    with pytest.raises(s3_stream.S3StreamError, match=r"s3://nope/k.*NoSuchBucket"):
        s3_stream.MultipartSink(s3, "nope", "k", PART).start()


def test_parts_in_flight_are_bounded(s3):
    active = {"now": 0, "max": 0}
    lock = threading.Lock()

    def before(request, **_):
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.05)  # keep the request open so that overlaps can happen

    def after(**_):
        with lock:
            active["now"] -= 1

    s3.meta.events.register("before-send.s3.UploadPart", before)
    s3.meta.events.register("after-call.s3.UploadPart", after)
    sink = _sink(s3, max_concurrency=2)
    data = os.urandom(PART * 7)
    sink.write(data)
    sink.finish(b"")
    assert 1 <= active["max"] <= 2
    assert _object(s3, "k") == data


def test_patching_an_uploaded_part_is_a_bug(s3):
    sink = _sink(s3)
    sink.write(os.urandom(PART * 3))
    with pytest.raises(s3_stream.S3StreamError, match="internal error"):
        sink.patch(PART + 10, b"x")
    sink.abort()
    assert _uploads(s3) == []
