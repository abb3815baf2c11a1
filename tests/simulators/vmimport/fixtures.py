"""pytest fixtures for the moto + VM Import simulator.

Load them with ``pytest_plugins = ["tests.simulators.vmimport.fixtures"]`` in a conftest,
or import the fixtures into a test module.

- ``aws``: one server for the whole session (task_duration from $VMIMPORT_TASK_DURATION,
  default 6 s). State is shared between tests; use ``aws_clean`` for isolation.
- ``aws_clean``: the session server, reset before the test (moto state, settings back to
  start values, counters zeroed); the same :class:`MotoVmImport` object.
- ``aws_factory``: ``aws_factory(task_duration=..., **faults)`` starts a dedicated server,
  stopped at the end of the test.
- ``vmimport_ready``: ``aws_clean`` plus a bucket ``vmimport-test`` and a correct
  ``vmimport`` role (see :func:`create_vmimport_role`), returned as a small namespace.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from tests.simulators.vmimport.launcher import MotoVmImport

TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "vmie.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:Externalid": "vmimport"}},
        }
    ],
}


def role_policy(bucket: str, prefix: str = "", partition: str = "aws") -> dict[str, Any]:
    """The least-privilege role policy of the VM Import user guide for one bucket/prefix."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
                "Resource": f"arn:{partition}:s3:::{bucket}",
            },
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}*"},
            {
                "Effect": "Allow",
                "Action": ["ec2:ModifySnapshotAttribute", "ec2:CopySnapshot", "ec2:RegisterImage", "ec2:Describe*"],
                "Resource": "*",
            },
        ],
    }


def create_vmimport_role(
    iam: Any, bucket: str, role_name: str = "vmimport", prefix: str = "", policy: dict[str, Any] | None = None
) -> None:
    """Create the service role with the documented trust policy and an inline role policy."""
    iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY))
    iam.put_role_policy(
        RoleName=role_name,
        PolicyName=role_name,
        PolicyDocument=json.dumps(policy if policy is not None else role_policy(bucket, prefix)),
    )


@pytest.fixture(scope="session")
def aws() -> Iterator[MotoVmImport]:
    duration = float(os.environ.get("VMIMPORT_TASK_DURATION", "6"))
    with MotoVmImport(task_duration=duration) as server:
        yield server


@pytest.fixture
def aws_clean(aws: MotoVmImport) -> MotoVmImport:
    aws.reset()
    return aws


@pytest.fixture
def aws_factory() -> Iterator[Callable[..., MotoVmImport]]:
    started: list[MotoVmImport] = []

    def factory(task_duration: float = 6.0, **faults: Any) -> MotoVmImport:
        server = MotoVmImport(task_duration=task_duration, **faults).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def vmimport_ready(aws_clean: MotoVmImport) -> SimpleNamespace:
    bucket = "vmimport-test"
    s3 = aws_clean.client("s3")
    iam = aws_clean.client("iam")
    ec2 = aws_clean.client("ec2")
    s3.create_bucket(Bucket=bucket)
    create_vmimport_role(iam, bucket)
    return SimpleNamespace(aws=aws_clean, bucket=bucket, s3=s3, iam=iam, ec2=ec2)
