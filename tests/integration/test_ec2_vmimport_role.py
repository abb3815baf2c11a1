"""esxi2ami.migrate.ec2_vmimport_role against the moto + VM Import server, through real ansible-playbook runs.

The module is pointed at the server only through the environment a user would export (AWS_URL,
credentials, region). The role it creates is then used by the simulated VM Import service, which
evaluates the trust and permissions policies the way the real one does.
"""

import json

from tests.integration.playbook import run_playbook

ROLE = "esxi2ami.migrate.ec2_vmimport_role"


def role_task(name="role", **params):
    return {"name": name, ROLE: params, "register": "out", "ignore_errors": True}


def run(server, tasks, **kwargs):
    res = run_playbook(tasks, env=server.env, **kwargs)
    assert res.data, res
    return res


def statements(doc):
    return {s["Sid"]: s for s in doc["Statement"]}


def as_list(value):
    return value if isinstance(value, list) else [value]


def test_create_check_mode_then_apply_then_unchanged(aws_clean):
    iam = aws_clean.client("iam")
    kms = aws_clean.client("kms")
    key_arn = kms.create_key(Description="vmimport test")["KeyMetadata"]["Arn"]
    params = dict(
        s3_locations=["s3://ova-staging/prod/exports/", "ova-archive"],
        kms_key_arns=[key_arn],
        tags={"team": "platform"},
    )

    # check mode: predicts the change and the documents, creates nothing
    res = run(aws_clean, [role_task(**params)], check=True, diff=True)
    out = res.task("role")
    assert out["changed"] is True and not out.get("failed"), out
    assert out["arn"] == "arn:aws:iam::123456789012:role/vmimport"
    assert out["diff"]["before"] == {}
    assert out["diff"]["after"]["permissions_policy"] == out["permissions_policy"]
    assert iam.list_roles()["Roles"] == []
    assert aws_clean.counters()["calls"].get("iam:CreateRole") is None

    # apply
    res = run(aws_clean, [role_task(**params)], diff=True)
    out = res.task("role")
    assert out["changed"] is True and not out.get("failed"), out
    role = iam.get_role(RoleName="vmimport")["Role"]
    assert out["arn"] == role["Arn"]
    assert {t["Key"]: t["Value"] for t in role.get("Tags", [])} == {"team": "platform"}

    trust = role["AssumeRolePolicyDocument"]
    [st] = trust["Statement"]
    assert st["Principal"] == {"Service": "vmie.amazonaws.com"}
    assert st["Condition"]["StringEquals"] == {"sts:Externalid": "vmimport", "aws:SourceAccount": "123456789012"}
    assert st["Condition"]["ArnLike"] == {"aws:SourceArn": "arn:aws:vmie:*:123456789012:*"}

    policy = iam.get_role_policy(RoleName="vmimport", PolicyName="vmimport")["PolicyDocument"]
    sts = statements(policy)
    # bucket-level actions on bucket ARNs only (an ARN with a key would not match them)
    assert sorted(as_list(sts["VmImportBuckets"]["Resource"])) == [
        "arn:aws:s3:::ova-archive",
        "arn:aws:s3:::ova-staging",
    ]
    assert sorted(as_list(sts["VmImportBuckets"]["Action"])) == ["s3:GetBucketLocation", "s3:ListBucket"]
    # reads under the prefix only
    assert sorted(as_list(sts["VmImportObjects"]["Resource"])) == [
        "arn:aws:s3:::ova-archive/*",
        "arn:aws:s3:::ova-staging/prod/exports/*",
    ]
    assert as_list(sts["VmImportObjects"]["Action"]) == ["s3:GetObject"]
    assert sts["VmImportEc2"]["Resource"] == "*"
    assert as_list(sts["VmImportKms"]["Resource"]) == [key_arn]
    assert "VmImportLicenseManager" not in sts
    assert out["s3_locations"] == ["ova-archive", "ova-staging/prod/exports/"]
    assert out["diff"]["after"]["trust_policy"] == out["trust_policy"]

    # re-run: unchanged, no writes; check mode agrees
    before = aws_clean.counters()["calls"]
    res = run(aws_clean, [role_task(**params)], diff=True)
    out = res.task("role")
    assert out["changed"] is False, out
    assert out["diff"]["before"] == out["diff"]["after"]
    after = aws_clean.counters()["calls"]
    for write in ("iam:CreateRole", "iam:PutRolePolicy", "iam:UpdateAssumeRolePolicy", "iam:TagRole"):
        assert after.get(write) == before.get(write), write
    res = run(aws_clean, [role_task(**params)], check=True)
    assert res.task("role")["changed"] is False


def test_locations_are_kept_unless_purged(aws_clean):
    iam = aws_clean.client("iam")
    run(aws_clean, [role_task(s3_locations=["bucket-one/exports/"])])
    # a second migration from another bucket: the first location stays
    res = run(aws_clean, [role_task(s3_locations=["bucket-two"])], diff=True)
    out = res.task("role")
    assert out["changed"] is True
    assert out["s3_locations"] == ["bucket-one/exports/", "bucket-two"]
    assert out["diff"]["before"]["permissions_policy"] != out["diff"]["after"]["permissions_policy"]
    policy = iam.get_role_policy(RoleName="vmimport", PolicyName="vmimport")["PolicyDocument"]
    assert sorted(as_list(statements(policy)["VmImportObjects"]["Resource"])) == [
        "arn:aws:s3:::bucket-one/exports/*",
        "arn:aws:s3:::bucket-two/*",
    ]
    # a location inside one already granted changes nothing
    res = run(aws_clean, [role_task(s3_locations=["bucket-two/sub/dir"])])
    assert res.task("role")["changed"] is False
    # purge: exactly the given locations
    res = run(aws_clean, [role_task(s3_locations=["bucket-two"], purge_locations=True, license_manager=True)])
    out = res.task("role")
    assert out["changed"] is True and out["s3_locations"] == ["bucket-two"] and out["license_manager"] is True
    policy = iam.get_role_policy(RoleName="vmimport", PolicyName="vmimport")["PolicyDocument"]
    assert as_list(statements(policy)["VmImportObjects"]["Resource"]) == ["arn:aws:s3:::bucket-two/*"]
    assert "license-manager:GetLicenseConfiguration" in statements(policy)["VmImportLicenseManager"]["Action"]


def test_repairs_a_hand_made_trust_policy_and_custom_names(aws_clean):
    iam = aws_clean.client("iam")
    weak_trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "vmie.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
    iam.create_role(RoleName="vmimport-eu", Path="/service/", AssumeRolePolicyDocument=json.dumps(weak_trust))
    res = run(
        aws_clean,
        [
            role_task(
                name="role-eu",
                role_name="vmimport-eu",
                path="/service/",
                policy_name="imports",
                s3_locations=["bucket-one"],
            )
        ],
    )
    out = res.task("role-eu")
    assert out["changed"] is True, out
    trust = iam.get_role(RoleName="vmimport-eu")["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Condition"]["StringEquals"]["sts:Externalid"] == "vmimport"
    assert iam.list_role_policies(RoleName="vmimport-eu")["PolicyNames"] == ["imports"]
    assert out["arn"] == "arn:aws:iam::123456789012:role/service/vmimport-eu"


def test_bad_input_fails_clearly_and_creates_nothing(aws_clean):
    iam = aws_clean.client("iam")
    res = run(
        aws_clean,
        [
            role_task(name="bad-url", s3_locations=["s3:/bucket/key"]),
            role_task(name="bad-bucket", s3_locations=["Bad_Bucket/prefix"]),
            role_task(name="alias", s3_locations=["bucket-one"], kms_key_arns=["alias/my-key"]),
            role_task(name="nothing", s3_locations=[]),
            role_task(name="path", s3_locations=["bucket-one"], path="service"),
        ],
    )
    assert "s3_locations" in res.task("bad-url")["msg"] and "Bad_Bucket" not in res.task("bad-url")["msg"]
    assert res.task("bad-url")["failed"] is True
    assert "not a valid S3 bucket name" in res.task("bad-bucket")["msg"]
    assert "kms_key_arns" in res.task("alias")["msg"] and "key ARN" in res.task("alias")["msg"]
    assert "at least one" in res.task("nothing")["msg"]
    assert "must begin and end with '/'" in res.task("path")["msg"]
    assert iam.list_roles()["Roles"] == []


def test_absent_deletes_role_and_policies(aws_clean):
    iam = aws_clean.client("iam")
    run(aws_clean, [role_task(s3_locations=["bucket-one"])])
    res = run(aws_clean, [role_task(state="absent")], check=True)
    assert res.task("role")["changed"] is True
    assert iam.get_role(RoleName="vmimport")["Role"]["RoleName"] == "vmimport"
    res = run(aws_clean, [role_task(state="absent"), role_task(name="again", state="absent")])
    assert res.task("role")["changed"] is True and not res.task("role").get("failed"), res.task("role")
    assert res.task("again")["changed"] is False
    assert iam.list_roles()["Roles"] == []


def test_boundary_and_tags_follow_the_options(aws_clean):
    iam = aws_clean.client("iam")
    boundary = iam.create_policy(
        PolicyName="vmimport-boundary",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*", "ec2:*"], "Resource": "*"}]}
        ),
    )["Policy"]["Arn"]
    base = dict(s3_locations=["bucket-one"], tags={"team": "platform", "cost": "1"})
    run(aws_clean, [role_task(boundary=boundary, **base)])
    role = iam.get_role(RoleName="vmimport")["Role"]
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == boundary

    # tags: purge_tags (default true) removes a tag no longer listed; an empty boundary removes it
    res = run(aws_clean, [role_task(s3_locations=["bucket-one"], tags={"team": "migrations"}, boundary="")], diff=True)
    out = res.task("role")
    assert out["changed"] is True, out
    assert out["diff"]["before"]["tags"] == {"team": "platform", "cost": "1"}
    assert out["diff"]["after"]["tags"] == {"team": "migrations"}
    assert out["diff"]["after"]["permissions_boundary"] is None
    role = iam.get_role(RoleName="vmimport")["Role"]
    assert {t["Key"]: t["Value"] for t in role.get("Tags", [])} == {"team": "migrations"}
    assert "PermissionsBoundary" not in role
    # without tags or boundary options, both are left alone
    res = run(aws_clean, [role_task(s3_locations=["bucket-one"])])
    assert res.task("role")["changed"] is False
    res = run(aws_clean, [role_task(s3_locations=["bucket-one"], boundary="arn:aws:iam::123456789012:role/x")])
    assert "not an IAM managed policy ARN" in res.task("role")["msg"]
