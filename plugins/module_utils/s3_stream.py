# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PRIVATE: stream bytes of unknown length into one S3 object with a multipart upload (no Ansible imports).

``MultipartSink`` takes a *tail* of bytes in order (``write``), lets the caller patch regions it
declared with ``hold`` (a tar header whose size is known only later), and at ``finish(prefix)``
puts ``prefix`` in front of everything: part 1 is prefix + the first 5 MiB of the tail (S3's
minimum part size) and is uploaded last. Parts 2..N go up as they fill, ``max_concurrency`` at a time, each
retried on its own with backoff; ``write`` blocks while that many are in flight, so memory stays
at about (max_concurrency + 2) x part_size + 5 MiB. Any failure aborts the multipart upload.

The boto3 client is passed in (from AnsibleAWSModule.client("s3") or boto3 directly).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

try:
    from botocore.exceptions import BotoCoreError, ClientError

    HAS_BOTOCORE = True
except ImportError:  # pragma: no cover - the module reports missing boto3
    HAS_BOTOCORE = False
    BotoCoreError = ClientError = Exception

MIB = 1 << 20
GIB = 1 << 30
S3_MIN_PART = 5 * MIB
S3_MAX_PART = 5 * GIB
S3_MAX_PARTS = 10000
PLANNED_PARTS = 9000  # headroom: stream-optimized disks can come out slightly larger than estimated
DEFAULT_MIN_PART = 16 * MIB
# Errors worth retrying a part for; anything else (AccessDenied, NoSuchUpload...) fails at once.
RETRYABLE_CODES = frozenset(
    (
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
    )
)


class S3StreamError(Exception):
    """The upload failed (and was aborted). The message names the bucket, key and part."""


def choose_part_size(estimated_size, requested=None):
    """Part size so that ``estimated_size`` needs at most PLANNED_PARTS parts: >= 16 MiB, MiB-aligned.

    A requested size is honoured when it is large enough. Returns (part_size, note); note says why
    a requested size had to be raised.
    """
    needed = -(-int(estimated_size or 0) // PLANNED_PARTS)
    needed = -(-needed // MIB) * MIB
    note = None
    if requested:
        size = int(requested)
        if size < S3_MIN_PART:
            size = S3_MIN_PART
            note = "part_size raised to the S3 minimum of 5 MiB"
        if size < needed:
            size = needed
            note = "part_size raised to %d MiB so an estimated %d bytes fit in %d parts" % (
                size // MIB,
                estimated_size,
                PLANNED_PARTS,
            )
    else:
        size = max(DEFAULT_MIN_PART, needed)
    if size > S3_MAX_PART:
        raise S3StreamError(
            "an estimated %d bytes would need parts over 5 GiB; S3 objects are limited to 5 TiB" % estimated_size
        )
    return size, note


def error_code(exc):
    if isinstance(exc, ClientError) and hasattr(exc, "response"):
        err = exc.response.get("Error", {})
        return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return None


def is_retryable(exc):
    if isinstance(exc, ClientError) and hasattr(exc, "response"):
        return error_code(exc) in RETRYABLE_CODES
    # Connection resets, timeouts, closed connections (BotoCoreError subclasses) and socket errors.
    return isinstance(exc, (BotoCoreError, OSError))


def in_progress_uploads(client, bucket, key, expected_bucket_owner=None):
    """The multipart uploads in progress for exactly ``key`` (ListMultipartUploads, Prefix=key), oldest first.

    Each is {"upload_id", "initiated" (ISO 8601)}. A process killed with SIGKILL leaves its upload here, parts
    and all; nothing but an abort (or a lifecycle rule) removes it.
    """
    owner = {"ExpectedBucketOwner": expected_bucket_owner} if expected_bucket_owner else {}
    found = []
    params = {"Bucket": bucket, "Prefix": key}
    while True:
        resp = client.list_multipart_uploads(**params, **owner)
        for upload in resp.get("Uploads") or []:
            if upload.get("Key") == key:  # the prefix also matches longer keys
                initiated = upload.get("Initiated")
                found.append(
                    {
                        "upload_id": upload["UploadId"],
                        "initiated": initiated.isoformat() if hasattr(initiated, "isoformat") else initiated,
                    }
                )
        if not resp.get("IsTruncated"):
            break
        params["KeyMarker"] = resp.get("NextKeyMarker")
        params["UploadIdMarker"] = resp.get("NextUploadIdMarker")
    return sorted(found, key=lambda u: str(u["initiated"]))


def abort_upload(client, bucket, key, upload_id, expected_bucket_owner=None):
    """Abort one multipart upload; one that is already gone counts as aborted."""
    owner = {"ExpectedBucketOwner": expected_bucket_owner} if expected_bucket_owner else {}
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, **owner)
    except ClientError as exc:
        if error_code(exc) != "NoSuchUpload":
            raise


class MultipartSink:
    """A multipart upload fed in order, with patchable held regions and a prefix known only at the end."""

    def __init__(
        self,
        client,
        bucket,
        key,
        part_size,
        max_concurrency=4,
        extra_args=None,
        expected_bucket_owner=None,
        retries=5,
        backoff=1.0,
        sleep=time.sleep,
    ):
        if part_size < S3_MIN_PART:
            raise S3StreamError("part_size must be at least 5 MiB (got %d bytes)" % part_size)
        if max_concurrency < 1:
            raise S3StreamError("max_concurrency must be at least 1")
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_size = int(part_size)
        # Part 1 waits in memory until the end; S3's 5 MiB minimum is all it needs to hold of the tail.
        self.first_size = min(self.part_size, S3_MIN_PART)
        self.max_concurrency = int(max_concurrency)
        self.extra_args = dict(extra_args or {})
        self.owner = {"ExpectedBucketOwner": expected_bucket_owner} if expected_bucket_owner else {}
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.sleep = sleep
        self.upload_id = None
        self.bytes_written = 0  # local disk bytes: always 0, kept for symmetry with FileSink
        self.bytes_uploaded = 0
        self._tail = 0
        self._part = 1  # number of the part being filled
        self._buf = bytearray()
        self._held = {}  # part number -> bytearray waiting for patches (part 1 waits for finish)
        self._holds = []  # [start, end) tail ranges still to be patched
        self._etags = {}
        self._crc32 = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="s3-part")
        self._futures = []
        self._error = None
        self._done = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self):
        try:
            # CRC32 per part, checked by S3 on each part and on completion, as the AWS SDKs' transfer managers do.
            resp = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ChecksumAlgorithm="CRC32", **self.extra_args, **self.owner
            )
        except (ClientError, BotoCoreError) as exc:
            self._pool.shutdown(wait=False)
            raise S3StreamError(
                "cannot start a multipart upload to s3://%s/%s: %s" % (self.bucket, self.key, exc)
            ) from exc
        self.upload_id = resp["UploadId"]
        return self

    @property
    def tail_size(self):
        return self._tail

    def _range(self, part):
        """Tail bytes [start, end) of a part: part 1 holds the first ``first_size``, the others ``part_size`` each."""
        if part == 1:
            return 0, self.first_size
        start = self.first_size + (part - 2) * self.part_size
        return start, start + self.part_size

    def _part_of(self, offset):
        if offset < self.first_size:
            return 1
        return (offset - self.first_size) // self.part_size + 2

    def _pending(self, part):
        start, end = self._range(part)
        return any(s < end and e > start for s, e in self._holds)

    def _check(self):
        if self._error is not None:
            raise self._error

    # -- feeding -----------------------------------------------------------------------------------
    def write(self, data):
        self._check()
        view = memoryview(data)
        while view:
            start, end = self._range(self._part)
            room = end - start - len(self._buf)
            chunk = view[:room]
            self._buf += chunk
            self._tail += len(chunk)
            view = view[len(chunk) :]
            if len(self._buf) == end - start:
                self._seal()

    def _seal(self):
        part, buf = self._part, self._buf
        self._part += 1
        self._buf = bytearray()
        if part == 1 or self._pending(part):
            self._held[part] = buf
        else:
            self._submit(part, buf)

    def hold(self, offset, length):
        self._holds.append([offset, offset + length])

    def patch(self, offset, data):
        end = offset + len(data)
        pos = offset
        while pos < end:
            part = self._part_of(pos)
            start, stop = self._range(part)
            n = min(stop, end) - pos
            if part == self._part:
                target = self._buf
            elif part in self._held:
                target = self._held[part]
            else:
                raise S3StreamError("internal error: part %d was uploaded before its bytes were final" % part)
            target[pos - start : pos - start + n] = data[pos - offset : pos - offset + n]
            pos += n
        self._holds = [h for h in self._holds if not (h[0] >= offset and h[1] <= end)]
        for part in sorted(self._held):
            if part != 1 and not self._pending(part):
                self._submit(part, self._held.pop(part))

    def _submit(self, part, buf):
        # Block while max_concurrency parts are in flight: back-pressure keeps memory bounded.
        while not self._slots.acquire(timeout=1):
            self._check()
        self._check()
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(self._pool.submit(self._upload, part, bytes(buf)))

    def _upload(self, part, body):
        try:
            self._upload_part(part, body)
        except Exception as exc:  # noqa: BLE001 - handed to the feeding thread, which raises it
            with self._lock:
                if self._error is None:
                    if not isinstance(exc, S3StreamError):
                        exc = S3StreamError(
                            "uploading part %d of s3://%s/%s failed: %s: %s"
                            % (part, self.bucket, self.key, type(exc).__name__, exc)
                        )
                    self._error = exc
        finally:
            self._slots.release()

    def _upload_part(self, part, body):
        attempt = 0
        while True:
            attempt += 1
            if self._error is not None:
                return
            try:
                resp = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    PartNumber=part,
                    Body=body,
                    ChecksumAlgorithm="CRC32",
                    **self.owner,
                )
            except (ClientError, BotoCoreError, OSError) as exc:
                if attempt > self.retries or not is_retryable(exc):
                    raise S3StreamError(
                        "uploading part %d (%d bytes) of s3://%s/%s failed after %d attempt(s): %s"
                        % (part, len(body), self.bucket, self.key, attempt, exc)
                    ) from exc
                delay = min(20.0, self.backoff * (2 ** (attempt - 1)))
                self.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto
                continue
            with self._lock:
                self._etags[part] = resp["ETag"]
                self._crc32[part] = resp.get("ChecksumCRC32")
                self.bytes_uploaded += len(body)
            return

    def _drain(self):
        for future in list(self._futures):
            future.result()
        self._futures = []
        self._check()

    def finish(self, prefix=b""):
        """Upload the rest, then part 1 (prefix + held first part), and complete. Returns etag/version/parts."""
        self._check()
        if self._holds:
            raise S3StreamError("internal error: finish() with regions still to be patched: %s" % self._holds)
        if self._buf or self._part == 1:
            part, buf = self._part, self._buf
            self._part += 1
            self._buf = bytearray()
            if part == 1:
                self._held[1] = buf
            else:
                self._submit(part, buf)
        first = self._held.pop(1, bytearray())
        # Part 1 goes up alongside the last parts still in flight: only now is the prefix known.
        self._submit(1, bytes(prefix) + bytes(first))
        self._drain()
        parts = [
            dict(
                {"PartNumber": n, "ETag": self._etags[n]},
                **({"ChecksumCRC32": self._crc32[n]} if self._crc32.get(n) else {}),
            )
            for n in sorted(self._etags)
        ]
        try:
            resp = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
                **self.owner,
            )
        except (ClientError, BotoCoreError) as exc:
            raise S3StreamError(
                "completing the multipart upload of s3://%s/%s failed: %s" % (self.bucket, self.key, exc)
            ) from exc
        self._done = True
        self._pool.shutdown(wait=True)
        return {
            "bucket": self.bucket,
            "key": self.key,
            "etag": resp.get("ETag"),
            "version_id": resp.get("VersionId"),
            "parts": len(parts),
            "part_size": self.part_size,
        }

    def abort(self):
        """Stop uploading and abort the multipart upload, so no parts are left behind. Safe to call twice."""
        if self._done:
            return
        with self._lock:
            if self._error is None:
                self._error = S3StreamError("the upload was aborted")
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True)
        self._held.clear()
        self._buf = bytearray()
        self._done = True
        if self.upload_id is None:
            return
        last = None
        for attempt in range(3):
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, **self.owner
                )
                return
            except (ClientError, BotoCoreError) as exc:
                if error_code(exc) == "NoSuchUpload":
                    return
                last = exc
                self.sleep(self.backoff * (attempt + 1))
        raise S3StreamError(
            "aborting multipart upload %s of s3://%s/%s failed (%s): remove it with "
            "`aws s3api abort-multipart-upload` or a bucket lifecycle rule"
            % (self.upload_id, self.bucket, self.key, last)
        )
