"""The vmimport role's policy builder, normaliser and the S3 URL / location parsers."""

import json
from urllib.parse import quote

import pytest

from ansible_collections.esxi2ami.migrate.plugins.module_utils.vmimport import (
    VMImportError,
    caller_partition_and_account,
    normalize_locations,
    parse_s3_location,
    parse_s3_url,
    permissions_policy,
    policies_equal,
    policy_grants,
    role_arn,
    trust_policy,
    validate_kms_key_arn,
)

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def by_sid(doc):
    return {s["Sid"]: s for s in doc["Statement"]}


# --- S3 URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("s3://bucket-one/exports/vm1.ova", ("bucket-one", "exports/vm1.ova")),
        ("S3://my.bucket/a b/c?d#e.ova", ("my.bucket", "a b/c?d#e.ova")),  # keys are taken literally
        ("s3://abc/x", ("abc", "x")),
    ],
)
def test_parse_s3_url_accepts(url, expected):
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("", "is empty"),
        (None, "is empty"),
        (" s3://bucket-one/k", "whitespace"),
        ("bucket-one/key", "is not a URL"),
        ("https://bucket-one.s3.amazonaws.com/key", "only s3:// URLs"),
        ("s3:/bucket-one/key", "is not a URL"),
        ("s3:///key", "no bucket name"),
        ("s3://bucket-one", "no object key"),
        ("s3://bucket-one/", "no object key"),
        ("s3://bucket-one/exports/", "names a folder"),
        ("s3://Bucket_One/key", "not a valid S3 bucket name"),
        ("s3://ab/key", "not a valid S3 bucket name"),
        ("s3://192.168.1.1/key", "IP address"),
        ("s3://a..b/key", "adjacent dots"),
        ("s3://bucket-one/" + "k" * 1025, "1024 bytes"),
        ("s3://bucket-one/a\nb", "control characters"),
    ],
)
def test_parse_s3_url_refuses_with_a_reason(url, fragment):
    with pytest.raises(VMImportError) as err:
        parse_s3_url(url)
    assert fragment in str(err.value)


def test_parse_s3_url_names_the_input_and_shows_the_form():
    with pytest.raises(VMImportError) as err:
        parse_s3_url("s3://bucket-one", what="dest")
    assert str(err.value).startswith("dest 's3://bucket-one'") and "s3://my-bucket/exports/vm1.ova" in str(err.value)


def test_parse_s3_url_bucket_only_when_key_not_required():
    assert parse_s3_url("s3://bucket-one", require_key=False) == ("bucket-one", "")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("bucket-one", ("bucket-one", "")),
        ("bucket-one/exports/", ("bucket-one", "exports/")),
        ("s3://bucket-one/exports", ("bucket-one", "exports")),
        ("s3://bucket-one", ("bucket-one", "")),
    ],
)
def test_parse_s3_location(text, expected):
    assert parse_s3_location(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [("", "is empty"), ("arn:aws:s3:::bucket-one", "is an ARN"), ("x/prefix", "not a valid S3 bucket name")],
)
def test_parse_s3_location_refuses(text, fragment):
    with pytest.raises(VMImportError) as err:
        parse_s3_location(text)
    assert fragment in str(err.value)


def test_normalize_locations_drops_duplicates_and_covered_prefixes():
    locations = [("b-one", "exports/vm1/"), ("b-one", "exports/"), ("b-one", "exports/"), ("b-two", ""), ("b-two", "x")]
    assert normalize_locations(locations) == [("b-one", "exports/"), ("b-two", "")]
    # a prefix that only shares characters is a different location
    assert normalize_locations([("b-one", "exp"), ("b-one", "other")]) == [("b-one", "exp"), ("b-one", "other")]


# --- partitions and ARNs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arn, partition",
    [
        ("arn:aws:iam::111122223333:user/alice", "aws"),
        ("arn:aws-cn:sts::111122223333:assumed-role/ops/alice", "aws-cn"),
        ("arn:aws-us-gov:iam::111122223333:root", "aws-us-gov"),
    ],
)
def test_caller_partition(arn, partition):
    assert caller_partition_and_account({"Arn": arn, "Account": "111122223333"}) == (partition, "111122223333")


def test_unknown_partition_is_refused():
    with pytest.raises(VMImportError, match="unknown AWS partition"):
        caller_partition_and_account({"Arn": "arn:aws-moon:iam::111122223333:root"})


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
def test_every_arn_uses_the_callers_partition(partition):
    key = KEY_ARN.replace("arn:aws:", "arn:%s:" % partition)
    trust = trust_policy(partition, "111122223333")
    policy = permissions_policy(partition, [("bucket-one", "exports/")], [key], license_manager=True)
    arns = json.dumps([trust, policy])
    assert "arn:%s:vmie:*:111122223333:*" % partition in arns
    assert "arn:%s:s3:::bucket-one" % partition in arns
    other = [p for p in ("aws", "aws-cn", "aws-us-gov") if p != partition]
    for wrong in other:
        assert '"arn:%s:' % wrong not in arns
    assert role_arn(partition, "111122223333", "vmimport") == "arn:%s:iam::111122223333:role/vmimport" % partition


def test_kms_key_arns_must_be_key_arns_in_the_partition():
    assert validate_kms_key_arn(KEY_ARN, "aws") == KEY_ARN
    for bad in ("alias/my-key", "1234abcd-12ab-34cd-56ef-1234567890ab", "arn:aws:kms:us-east-1:111122223333:alias/x"):
        with pytest.raises(VMImportError, match="not a KMS key ARN"):
            validate_kms_key_arn(bad, "aws")
    with pytest.raises(VMImportError, match="partition 'aws' but the caller is in 'aws-cn'"):
        validate_kms_key_arn(KEY_ARN, "aws-cn")


# --- the documents --------------------------------------------------------------------------------


def test_trust_policy_has_external_id_and_source_account():
    [st] = trust_policy("aws", "111122223333")["Statement"]
    assert st["Effect"] == "Allow" and st["Action"] == "sts:AssumeRole"
    assert st["Principal"] == {"Service": "vmie.amazonaws.com"}
    assert st["Condition"]["StringEquals"] == {"sts:Externalid": "vmimport", "aws:SourceAccount": "111122223333"}
    assert st["Condition"]["ArnLike"] == {"aws:SourceArn": "arn:aws:vmie:*:111122223333:*"}


def test_permissions_policy_is_least_privilege():
    policy = permissions_policy(
        "aws", [("bucket-two", ""), ("bucket-one", "exports/"), ("bucket-one", "more/")], [KEY_ARN]
    )
    sts = by_sid(policy)
    assert set(sts) == {"VmImportBuckets", "VmImportObjects", "VmImportEc2", "VmImportKms"}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    # bucket-level actions only on bucket ARNs (one per bucket)
    assert sts["VmImportBuckets"]["Action"] == ["s3:GetBucketLocation", "s3:ListBucket"]
    assert sts["VmImportBuckets"]["Resource"] == ["arn:aws:s3:::bucket-one", "arn:aws:s3:::bucket-two"]
    # object reads only under each prefix
    assert sts["VmImportObjects"]["Action"] == ["s3:GetObject"]
    assert sts["VmImportObjects"]["Resource"] == [
        "arn:aws:s3:::bucket-one/exports/*",
        "arn:aws:s3:::bucket-one/more/*",
        "arn:aws:s3:::bucket-two/*",
    ]
    assert sts["VmImportEc2"]["Resource"] == "*"
    assert sorted(sts["VmImportEc2"]["Action"]) == [
        "ec2:CopySnapshot",
        "ec2:Describe*",
        "ec2:ModifySnapshotAttribute",
        "ec2:RegisterImage",
    ]
    assert sts["VmImportKms"]["Resource"] == [KEY_ARN]
    assert "kms:Decrypt" in sts["VmImportKms"]["Action"]
    # nothing anywhere grants s3 writes or KMS on *
    text = json.dumps(policy)
    assert "s3:PutObject" not in text and "s3:*" not in text
    assert sts["VmImportKms"]["Resource"] != "*"


def test_no_kms_no_license_manager_unless_asked():
    sts = by_sid(permissions_policy("aws", [("bucket-one", "")]))
    assert set(sts) == {"VmImportBuckets", "VmImportObjects", "VmImportEc2"}
    sts = by_sid(permissions_policy("aws", [("bucket-one", "")], license_manager=True))
    assert sts["VmImportLicenseManager"]["Resource"] == "*"


def test_permissions_policy_needs_a_location():
    with pytest.raises(VMImportError, match="at least one S3 bucket"):
        permissions_policy("aws", [])


def test_policy_grants_reads_back_what_the_builder_wrote_and_hand_made_statements():
    ours = permissions_policy("aws", [("bucket-one", "exports/"), ("bucket-two", "")], [KEY_ARN], license_manager=True)
    assert policy_grants(ours) == ([("bucket-one", "exports/"), ("bucket-two", "")], [KEY_ARN], True)
    hand_made = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::legacy/ova/*"},
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::odd/*/pattern*"},
            {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::denied/*"},
        ],
    }
    assert policy_grants(json.dumps(hand_made)) == ([("legacy", "ova/")], [], False)


def test_normalized_comparison_ignores_form_but_not_meaning():
    a = permissions_policy("aws", [("bucket-one", "exports/")], [KEY_ARN])
    b = json.loads(json.dumps(a))
    b["Statement"].reverse()
    for st in b["Statement"]:
        if isinstance(st["Action"], list):
            st["Action"] = [x.upper() for x in reversed(st["Action"])]
    b["Statement"][0]["Resource"] = b["Statement"][0]["Resource"]  # same
    assert policies_equal(a, b)
    assert policies_equal(a, quote(json.dumps(a)))  # IAM's URL-encoded wire form
    single = {"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "x"}}
    listed = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["x"]}],
    }
    assert policies_equal(single, listed)
    trust = trust_policy("aws", "111122223333")
    renamed = json.loads(json.dumps(trust).replace("sts:Externalid", "sts:ExternalId"))
    assert policies_equal(trust, renamed)  # condition keys are case-insensitive
    # a different resource, account or extra statement is a change
    assert not policies_equal(a, permissions_policy("aws", [("bucket-one", "other/")], [KEY_ARN]))
    assert not policies_equal(trust, trust_policy("aws", "444455556666"))
    assert not policies_equal(a, permissions_policy("aws", [("bucket-one", "exports/")], [KEY_ARN], True))
    assert not policies_equal(a, None)


def test_policy_document_that_is_not_json_is_an_error():
    from ansible_collections.esxi2ami.migrate.plugins.module_utils.vmimport import load_policy

    with pytest.raises(VMImportError, match="not valid JSON"):
        load_policy("{not json")
