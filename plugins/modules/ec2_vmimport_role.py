#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: esxi2ami.migrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ec2_vmimport_role
short_description: Manage the least-privilege service role EC2 VM Import uses (vmimport)
version_added: 0.1.0
description:
  - Creates or updates the IAM service role that the EC2 VM Import service assumes to read disk images from S3
    and register AMIs (by default C(vmimport)), with its trust policy and one inline permissions policy.
  - The trust policy lets only C(vmie.amazonaws.com) assume the role, with the C(sts:Externalid) condition the
    service sends and the C(aws:SourceAccount) / C(aws:SourceArn) conditions that limit it to the caller's account.
  - The permissions policy is least privilege. C(s3:GetBucketLocation) and C(s3:ListBucket) on each bucket ARN
    (bucket-level actions do not match an ARN with a key), C(s3:GetObject) on C(bucket/prefix*) only,
    C(ec2:CopySnapshot), C(ec2:Describe*), C(ec2:ModifySnapshotAttribute), C(ec2:RegisterImage) on C(*) (the
    service creates those resources), KMS actions only on the given key ARNs and license-manager actions only
    when asked.
  - ARNs use the caller's partition (C(aws), C(aws-cn), C(aws-us-gov)), read from STS GetCallerIdentity.
  - Idempotent. The wanted documents are compared with the current ones after normalisation (order, single values
    versus lists, case of action names), so an unchanged role means no write call at all.
  - By default S3 locations and KMS keys already granted by the policy are kept (O(purge_locations=false)), so
    migrations from different buckets can share one role.
author:
  - esxi2ami.migrate maintainers (@esxi2ami)
options:
  name:
    description:
      - Name of the role.
      - The import module's O(esxi2ami.migrate.ec2_import_image#module:role_name) must name the same role when it
        is not C(vmimport).
    type: str
    default: vmimport
    aliases: [role_name]
  s3_locations:
    description:
      - S3 locations the imports read disk images from. Each is C(bucket), C(bucket/prefix) or an C(s3://) URL of
        either form.
      - C(bucket) grants reading every object of the bucket; C(bucket/exports/) grants C(exports/*) only.
      - Required when the role is created. When it exists, locations already in the policy are kept unless
        O(purge_locations=true).
    type: list
    elements: str
    default: []
  kms_key_arns:
    description:
      - ARNs of KMS keys the service may use, for SSE-KMS encrypted S3 objects and for encrypted AMIs
        (C(kms:CreateGrant), C(kms:Decrypt), C(kms:DescribeKey), C(kms:Encrypt), C(kms:GenerateDataKey*),
        C(kms:ReEncrypt*)).
      - Key ARNs only; aliases and key ids do not work in an IAM policy.
    type: list
    elements: str
    default: []
  license_manager:
    description:
      - Allow the license-manager actions the service needs when
        O(esxi2ami.migrate.ec2_import_image#module:license_specifications) are used.
      - When V(false) and O(purge_locations=false), a license-manager grant already in the policy is kept.
    type: bool
    default: false
  policy_name:
    description:
      - Name of the inline policy on the role that this module manages.
    type: str
    default: vmimport
  purge_locations:
    description:
      - When V(true), the policy grants exactly O(s3_locations), O(kms_key_arns) and O(license_manager); other
        locations, keys and license-manager access in the policy are removed.
      - When V(false), those already granted by the policy are kept and the given ones added.
    type: bool
    default: false
  path:
    description:
      - IAM path of the role. IAM cannot move an existing role to another path; a mismatch is an error.
    type: str
    default: /
  boundary:
    description:
      - ARN of a managed policy to set as the role's permissions boundary.
      - Use an empty string to remove a boundary. When not set, the boundary is left as it is.
    type: str
    aliases: [boundary_policy_arn]
  description:
    description:
      - Description of the role, used when it is created.
    type: str
    default: Service role for EC2 VM Import (esxi2ami.migrate)
  state:
    description:
      - V(present) creates or updates the role and its policy.
      - V(absent) deletes the role with its inline policies, detached managed policies and instance profile links.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - esxi2ami.migrate.attributes
  - esxi2ami.migrate.attributes.check_mode_full
  - esxi2ami.migrate.attributes.diff_mode_full
  - esxi2ami.migrate.attributes.idempotent
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.tags
  - amazon.aws.boto3
notes:
  - The caller needs C(sts:GetCallerIdentity), C(iam:GetRole), C(iam:CreateRole), C(iam:GetRolePolicy),
    C(iam:PutRolePolicy), C(iam:UpdateAssumeRolePolicy), C(iam:TagRole), C(iam:UntagRole) and, for the boundary,
    C(iam:PutRolePermissionsBoundary) / C(iam:DeleteRolePermissionsBoundary); for O(state=absent) also
    C(iam:ListRolePolicies), C(iam:DeleteRolePolicy), C(iam:ListAttachedRolePolicies), C(iam:DetachRolePolicy),
    C(iam:ListInstanceProfilesForRole), C(iam:RemoveRoleFromInstanceProfile) and C(iam:DeleteRole).
  - A role created moments ago can be refused by VM Import for up to about a minute while IAM propagates;
    M(esxi2ami.migrate.ec2_import_image) retries that refusal.
seealso:
  - module: esxi2ami.migrate.ec2_import_image
  - name: VM Import/Export required permissions
    description: The service role as AWS documents it.
    link: https://docs.aws.amazon.com/vm-import/latest/userguide/required-permissions.html
"""

EXAMPLES = r"""
- name: Let VM Import read OVAs under s3://migration-bucket/exports/
  esxi2ami.migrate.ec2_vmimport_role:
    s3_locations:
      - migration-bucket/exports/

- name: Two buckets, an SSE-KMS key, tags; a custom role name
  esxi2ami.migrate.ec2_vmimport_role:
    name: vmimport-migrations
    s3_locations:
      - s3://ova-staging-eu/prod/
      - ova-archive
    kms_key_arns:
      - arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
    tags:
      team: platform
  register: vmimport_role

- name: Exactly these locations, dropping any others from the policy
  esxi2ami.migrate.ec2_vmimport_role:
    s3_locations:
      - migration-bucket/exports/
    purge_locations: true

- name: Remove the role
  esxi2ami.migrate.ec2_vmimport_role:
    state: absent
"""

RETURN = r"""
arn:
  description: ARN of the role (predicted in check mode when the role does not exist yet).
  returned: when O(state=present)
  type: str
  sample: arn:aws:iam::111122223333:role/vmimport
role_name:
  description: Name of the role.
  returned: always
  type: str
  sample: vmimport
policy_name:
  description: Name of the inline policy the module manages.
  returned: when O(state=present)
  type: str
  sample: vmimport
trust_policy:
  description: The role's trust policy document after the run (the wanted one in check mode).
  returned: when O(state=present)
  type: dict
  sample:
    Version: "2012-10-17"
    Statement:
      - Effect: Allow
        Principal:
          Service: vmie.amazonaws.com
        Action: sts:AssumeRole
        Condition:
          StringEquals:
            sts:Externalid: vmimport
            aws:SourceAccount: "111122223333"
          ArnLike:
            aws:SourceArn: "arn:aws:vmie:*:111122223333:*"
permissions_policy:
  description: The inline permissions policy document after the run (the wanted one in check mode).
  returned: when O(state=present)
  type: dict
s3_locations:
  description: The S3 locations the policy grants, as C(bucket) or C(bucket/prefix), sorted.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [migration-bucket/exports/]
kms_key_arns:
  description: The KMS key ARNs the policy grants.
  returned: when O(state=present)
  type: list
  elements: str
license_manager:
  description: Whether the policy grants the license-manager actions.
  returned: when O(state=present)
  type: bool
partition:
  description: The AWS partition of the caller, used in every ARN.
  returned: always
  type: str
  sample: aws
role:
  description: The role as IAM describes it (snake_case keys; policy documents and tags as dicts). Empty when
    the role does not exist, or in check mode before it is created.
  returned: always
  type: dict
  contains:
    role_name:
      description: Name.
      type: str
    role_id:
      description: Stable unique id.
      type: str
    arn:
      description: ARN.
      type: str
    path:
      description: IAM path.
      type: str
    create_date:
      description: Creation time (ISO 8601).
      type: str
    tags:
      description: Tags as a dict.
      type: dict
    permissions_boundary:
      description: The boundary policy, if any.
      type: dict
diff:
  description: Before and after of the trust policy, permissions policy, tags and boundary, when run with C(--diff).
  returned: when diff mode is on
  type: dict
"""

import copy  # noqa: E402
import json  # noqa: E402

from ansible.module_utils.common.dict_transformations import camel_dict_to_snake_dict  # noqa: E402

from ansible_collections.amazon.aws.plugins.module_utils.botocore import is_boto3_error_code  # noqa: E402
from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule  # noqa: E402
from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry  # noqa: E402
from ansible_collections.amazon.aws.plugins.module_utils.tagging import (  # noqa: E402
    ansible_dict_to_boto3_tag_list,
    boto3_tag_list_to_ansible_dict,
    compare_aws_tags,
)

from ansible_collections.esxi2ami.migrate.plugins.module_utils.vmimport import (  # noqa: E402
    VMImportError,
    caller_partition_and_account,
    format_location,
    load_policy,
    normalize_locations,
    parse_arn,
    parse_s3_location,
    permissions_policy,
    policies_equal,
    policy_grants,
    role_arn,
    trust_policy,
    validate_kms_key_arn,
)

try:
    import botocore
except ImportError:
    pass  # handled by AnsibleAWSModule


class RoleModule(object):
    """Read the role -> compute the wanted documents -> compare -> (check mode: predict) -> write -> report."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.name = module.params["name"]
        retry = AWSRetry.jittered_backoff(retries=10, delay=1, max_delay=20)
        self.iam = module.client("iam", retry_decorator=retry)
        self.sts = module.client("sts", retry_decorator=retry)
        self.changed = False
        self.before = {}
        self.after = {}

    # reading ------------------------------------------------------------------------------
    def caller(self):
        try:
            identity = self.sts.get_caller_identity(aws_retry=True)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            self.module.fail_json_aws(e, msg="Could not read the caller identity (sts:GetCallerIdentity)")
        return caller_partition_and_account(identity)

    def get_role(self):
        try:
            return self.iam.get_role(RoleName=self.name, aws_retry=True)["Role"]
        except is_boto3_error_code("NoSuchEntity"):
            return None
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:  # pylint: disable=duplicate-except
            self.module.fail_json_aws(e, msg="Could not read IAM role %s" % self.name)

    def get_inline_policy(self):
        try:
            doc = self.iam.get_role_policy(RoleName=self.name, PolicyName=self.params["policy_name"], aws_retry=True)
            return load_policy(doc["PolicyDocument"])
        except is_boto3_error_code("NoSuchEntity"):
            return None
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:  # pylint: disable=duplicate-except
            self.module.fail_json_aws(
                e, msg="Could not read inline policy %s of role %s" % (self.params["policy_name"], self.name)
            )

    def get_tags(self, role):
        if "Tags" in role:
            return boto3_tag_list_to_ansible_dict(role["Tags"])
        try:
            tags = self.iam.list_role_tags(RoleName=self.name, aws_retry=True)["Tags"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            self.module.fail_json_aws(e, msg="Could not list tags of role %s" % self.name)
        return boto3_tag_list_to_ansible_dict(tags)

    # wanted state ---------------------------------------------------------------------------
    def wanted_grants(self, partition, current_policy):
        try:
            locations = [parse_s3_location(loc, what="s3_locations item") for loc in self.params["s3_locations"]]
            keys = [validate_kms_key_arn(arn, partition) for arn in self.params["kms_key_arns"]]
        except VMImportError as e:
            self.module.fail_json(msg=str(e))
        license_manager = self.params["license_manager"]
        if current_policy is not None and not self.params["purge_locations"]:
            old_locations, old_keys, old_license_manager = policy_grants(current_policy)
            locations += old_locations
            keys += old_keys
            license_manager = license_manager or old_license_manager
        locations = normalize_locations(locations)
        if not locations:
            self.module.fail_json(
                msg="s3_locations is empty and the policy %s of role %s grants no S3 location: give at least one "
                "bucket or bucket/prefix the imports read from" % (self.params["policy_name"], self.name)
            )
        return locations, sorted(set(keys)), license_manager

    def validate(self):
        path = self.params["path"]
        if not path.startswith("/") or not path.endswith("/"):
            self.module.fail_json(msg="path %r must begin and end with '/', e.g. / or /service-roles/" % path)
        boundary = self.params.get("boundary")
        if boundary:
            try:
                parts = parse_arn(boundary)
            except VMImportError as e:
                self.module.fail_json(msg="boundary: %s" % e)
            if parts["service"] != "iam" or not parts["resource"].startswith("policy/"):
                self.module.fail_json(
                    msg="boundary %r is not an IAM managed policy ARN (arn:<partition>:iam::<account>:policy/<name>)"
                    % boundary
                )

    # state: present -------------------------------------------------------------------------
    def present(self):
        self.validate()
        partition, account = self.caller()
        role = self.get_role()
        current_policy = self.get_inline_policy() if role else None
        locations, keys, license_manager = self.wanted_grants(partition, current_policy)
        want_trust = trust_policy(partition, account)
        want_policy = permissions_policy(partition, locations, keys, license_manager)
        want_tags = self.params.get("tags")
        want_boundary = self.params.get("boundary")

        if role is None:
            self.before = {}
            self.after = self.state_doc(want_trust, want_policy, want_tags or {}, want_boundary or None)
            self.changed = True
            if not self.module.check_mode:
                self.create(want_trust, want_policy, want_tags, want_boundary)
        else:
            if role.get("Path", "/") != self.params["path"]:
                self.module.fail_json(
                    msg="role %s exists with path %s, not %s; IAM cannot move a role: set path: %s, or delete the "
                    "role (state: absent) and run again"
                    % (self.name, role.get("Path"), self.params["path"], role.get("Path"))
                )
            current_trust = load_policy(role.get("AssumeRolePolicyDocument"))
            current_tags = self.get_tags(role)
            current_boundary = (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
            self.before = self.state_doc(current_trust, current_policy, current_tags, current_boundary)
            after_tags = current_tags
            tags_to_set, tags_to_unset = {}, []
            if want_tags is not None:
                tags_to_set, tags_to_unset = compare_aws_tags(current_tags, want_tags, self.params["purge_tags"])
                after_tags = dict((k, v) for k, v in current_tags.items() if k not in tags_to_unset)
                after_tags.update(dict((k, str(v)) for k, v in tags_to_set.items()))
            after_boundary = current_boundary
            if want_boundary is not None:
                after_boundary = want_boundary or None
            self.after = self.state_doc(want_trust, want_policy, after_tags, after_boundary)
            update_trust = not policies_equal(current_trust, want_trust)
            update_policy = current_policy is None or not policies_equal(current_policy, want_policy)
            update_boundary = after_boundary != current_boundary
            self.changed = bool(update_trust or update_policy or tags_to_set or tags_to_unset or update_boundary)
            if self.changed and not self.module.check_mode:
                self.update(
                    want_trust if update_trust else None,
                    want_policy if update_policy else None,
                    tags_to_set,
                    tags_to_unset,
                    after_boundary if update_boundary else False,
                )

        final = self.get_role() if not self.module.check_mode else role
        result = dict(
            changed=self.changed,
            role_name=self.name,
            arn=(final or {}).get("Arn") or role_arn(partition, account, self.name, self.params["path"]),
            policy_name=self.params["policy_name"],
            trust_policy=want_trust,
            permissions_policy=want_policy,
            s3_locations=[format_location(b, p) for b, p in locations],
            kms_key_arns=keys,
            license_manager=license_manager,
            partition=partition,
            role=self.describe(final),
        )
        self.exit(result)

    @staticmethod
    def state_doc(trust, policy, tags, boundary):
        return {
            "trust_policy": copy.deepcopy(trust),
            "permissions_policy": copy.deepcopy(policy),
            "tags": dict(tags or {}),
            "permissions_boundary": boundary,
        }

    def create(self, trust, policy, tags, boundary):
        params = dict(
            RoleName=self.name,
            Path=self.params["path"],
            AssumeRolePolicyDocument=self.dumps(trust),
            Description=self.params["description"],
        )
        if tags:
            params["Tags"] = ansible_dict_to_boto3_tag_list(tags)
        if boundary:
            params["PermissionsBoundary"] = boundary
        try:
            self.iam.create_role(aws_retry=True, **params)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            self.module.fail_json_aws(e, msg="Could not create IAM role %s" % self.name)
        try:
            self.put_policy(policy)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            # Nothing left half done: a role without its policy is useless and would confuse the next run.
            try:
                self.iam.delete_role(RoleName=self.name, aws_retry=True)
                cleanup = "the role was deleted again"
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as cleanup_error:
                cleanup = "deleting the role again also failed (%s): delete it by hand" % cleanup_error
            self.module.fail_json_aws(
                e,
                msg="Created IAM role %s but could not put its policy %s; %s"
                % (self.name, self.params["policy_name"], cleanup),
            )

    def put_policy(self, policy):
        self.iam.put_role_policy(
            RoleName=self.name, PolicyName=self.params["policy_name"], PolicyDocument=self.dumps(policy), aws_retry=True
        )

    def update(self, trust, policy, tags_to_set, tags_to_unset, boundary):
        step = "update"
        try:
            if trust is not None:
                step = "update the trust policy of"
                self.iam.update_assume_role_policy(RoleName=self.name, PolicyDocument=self.dumps(trust), aws_retry=True)
            if policy is not None:
                step = "put the inline policy %s on" % self.params["policy_name"]
                self.put_policy(policy)
            if tags_to_unset:
                step = "untag"
                self.iam.untag_role(RoleName=self.name, TagKeys=tags_to_unset, aws_retry=True)
            if tags_to_set:
                step = "tag"
                self.iam.tag_role(RoleName=self.name, Tags=ansible_dict_to_boto3_tag_list(tags_to_set), aws_retry=True)
            if boundary is not False:
                step = "set the permissions boundary of"
                if boundary:
                    self.iam.put_role_permissions_boundary(
                        RoleName=self.name, PermissionsBoundary=boundary, aws_retry=True
                    )
                else:
                    self.iam.delete_role_permissions_boundary(RoleName=self.name, aws_retry=True)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            self.module.fail_json_aws(e, msg="Could not %s IAM role %s" % (step, self.name))

    # state: absent --------------------------------------------------------------------------
    def absent(self):
        partition, _account = self.caller()
        role = self.get_role()
        if role is None:
            self.exit(dict(changed=False, role_name=self.name, partition=partition, role={}))
        current_policy = self.get_inline_policy()
        self.before = self.state_doc(
            load_policy(role.get("AssumeRolePolicyDocument")),
            current_policy,
            self.get_tags(role),
            (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn"),
        )
        self.after = {}
        self.changed = True
        if not self.module.check_mode:
            step = "list the policies of"
            try:
                for page in self.iam.get_paginator("list_instance_profiles_for_role").paginate(RoleName=self.name):
                    for profile in page["InstanceProfiles"]:
                        step = "remove from instance profile %s" % profile["InstanceProfileName"]
                        self.iam.remove_role_from_instance_profile(
                            InstanceProfileName=profile["InstanceProfileName"], RoleName=self.name, aws_retry=True
                        )
                for page in self.iam.get_paginator("list_attached_role_policies").paginate(RoleName=self.name):
                    for policy in page["AttachedPolicies"]:
                        step = "detach policy %s from" % policy["PolicyArn"]
                        self.iam.detach_role_policy(RoleName=self.name, PolicyArn=policy["PolicyArn"], aws_retry=True)
                for page in self.iam.get_paginator("list_role_policies").paginate(RoleName=self.name):
                    for policy_name in page["PolicyNames"]:
                        step = "delete inline policy %s of" % policy_name
                        self.iam.delete_role_policy(RoleName=self.name, PolicyName=policy_name, aws_retry=True)
                step = "delete"
                self.iam.delete_role(RoleName=self.name, aws_retry=True)
            except is_boto3_error_code("NoSuchEntity"):
                pass  # deleted meanwhile: the wanted state
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:  # pylint: disable=duplicate-except
                self.module.fail_json_aws(e, msg="Could not %s IAM role %s" % (step, self.name))
        self.exit(dict(changed=True, role_name=self.name, partition=partition, role=self.describe(role)))

    # output -----------------------------------------------------------------------------------
    @staticmethod
    def dumps(document):
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    @staticmethod
    def describe(role):
        if not role:
            return {}
        role = dict(role)
        tags = boto3_tag_list_to_ansible_dict(role.pop("Tags", []) or [])
        trust = load_policy(role.pop("AssumeRolePolicyDocument", None))
        out = camel_dict_to_snake_dict(role)
        if "create_date" in out and hasattr(role.get("CreateDate"), "isoformat"):
            out["create_date"] = role["CreateDate"].isoformat()
        out["tags"] = tags
        out["assume_role_policy_document"] = trust
        return out

    def exit(self, result):
        if self.module._diff:
            result["diff"] = dict(before=self.before, after=self.after)
        self.module.exit_json(**result)


def main():
    argument_spec = dict(
        name=dict(type="str", default="vmimport", aliases=["role_name"]),
        s3_locations=dict(type="list", elements="str", default=[]),
        kms_key_arns=dict(type="list", elements="str", default=[], no_log=False),
        license_manager=dict(type="bool", default=False),
        policy_name=dict(type="str", default="vmimport"),
        purge_locations=dict(type="bool", default=False),
        path=dict(type="str", default="/"),
        boundary=dict(type="str", aliases=["boundary_policy_arn"]),
        description=dict(type="str", default="Service role for EC2 VM Import (esxi2ami.migrate)"),
        tags=dict(type="dict", aliases=["resource_tags"]),
        purge_tags=dict(type="bool", default=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    )
    module = AnsibleAWSModule(argument_spec=argument_spec, supports_check_mode=True)
    runner = RoleModule(module)
    if module.params["state"] == "present":
        runner.present()
    else:
        runner.absent()


if __name__ == "__main__":
    main()
