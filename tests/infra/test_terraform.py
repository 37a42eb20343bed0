"""terraform/ checked here, without AWS: formatting, validation, a plan against a moto server
with assertions on the plan JSON, and a full apply + destroy against moto.

All terraform commands run in a temporary copy of terraform/ (see conftest.py), initialised
from the offline provider mirror; the tests skip only when the terraform binary is missing.
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from .conftest import TERRAFORM_DIR, MotoServer, Terraform, _terraform_env, copy_terraform

AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"
# A documentation range (RFC 5737) as the operator CIDR allowed on the public API endpoint.
OPERATOR_CIDR = "203.0.113.0/24"
GPU_LABEL = {"marketsearch/node-pool": "gpu"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}
PIPELINE_SUBJECTS = {"system:serviceaccount:kubeflow:pipeline-runner",
                     "system:serviceaccount:marketsearch:pipeline-runner"}
MODEL_SERVER_SUBJECTS = {"system:serviceaccount:marketsearch:model-server"}
BUCKET_KEYS = ("data", "artifacts")
IRSA_ROLES = ("pipeline", "model-server", "mlflow", "cluster-autoscaler", "ebs-csi")
ECR_REPOSITORIES = ("base", "trainer", "serving")
REQUIRED_OUTPUTS = {
    "cluster_name", "cluster_endpoint", "ecr_repository_urls", "data_bucket",
    "artifacts_bucket", "rds_endpoint", "rds_master_secret_arn", "irsa_role_arns",
    "pipeline_role_arn", "model_server_role_arn", "region",
}


# --- helpers -------------------------------------------------------------------------------

def _after(plan: dict) -> dict[str, dict]:
    """address -> planned values (``after``) of every resource change and data read."""
    return {rc["address"]: rc["change"]["after"] for rc in plan["resource_changes"]}


def _expressions(plan: dict) -> dict[str, dict]:
    """address -> configuration expressions (constant values and references)."""
    return {r["address"]: r.get("expressions", {})
            for r in plan["configuration"]["root_module"]["resources"]}


def _statements(policy_json: str) -> list[dict]:
    statements = json.loads(policy_json)["Statement"]
    return statements if isinstance(statements, list) else [statements]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _state_resources(state: dict) -> dict[str, dict]:
    return {r["address"]: r["values"] for r in state["values"]["root_module"]["resources"]}


# --- static checks ------------------------------------------------------------------------

def test_fmt(terraform_bin: str):
    """Every .tf file is in `terraform fmt` canonical form."""
    proc = subprocess.run([terraform_bin, "fmt", "-check", "-recursive", "-diff", "-no-color",
                           str(TERRAFORM_DIR)], capture_output=True, text=True,
                          env=_terraform_env(), timeout=120)
    assert proc.returncode == 0, \
        f"terraform fmt -check failed (run `terraform fmt -recursive terraform`):\n" \
        f"{proc.stdout}\n{proc.stderr}"


def test_validate(tf_initialised: Terraform):
    """`terraform validate` passes with no errors and no warnings."""
    proc = tf_initialised.run("validate", "-json", "-no-color", check=False)
    result = json.loads(proc.stdout)
    problems = []
    for d in result.get("diagnostics", []):
        where = d.get("range", {})
        problems.append(f"{d['severity']}: {d['summary']}: {d.get('detail', '')} "
                        f"({where.get('filename')}:{where.get('start', {}).get('line')})")
    assert result["valid"] and not problems, "\n".join(problems) or proc.stderr


def test_only_the_aws_provider_and_no_modules(tf_initialised: Terraform):
    """The configuration uses hashicorp/aws alone, pinned to 5.x, and no registry modules."""
    lock = (tf_initialised.workdir / ".terraform.lock.hcl").read_text()
    providers = re.findall(r'^provider "([^"]+)"', lock, flags=re.M)
    assert providers == [AWS_PROVIDER]
    assert re.search(r'^\s*version\s*=\s*"5\.', lock, flags=re.M), lock
    for path in TERRAFORM_DIR.glob("*.tf"):
        assert not re.search(r'^\s*module\s+"', path.read_text(), flags=re.M), \
            f"{path.name} calls a module; write aws_* resources instead"


# --- plan against moto --------------------------------------------------------------------

@pytest.fixture(scope="module")
def plan(tf_initialised: Terraform, moto_server: MotoServer) -> dict:
    """`terraform plan` with the default variables plus a public-endpoint CIDR, against moto;
    the plan as JSON (`terraform show -json`)."""
    tf_initialised.point_at(moto_server.url)
    tf_initialised.run("plan", "-input=false", "-no-color", "-out=tfplan",
                       "-var", f'cluster_endpoint_public_access_cidrs=["{OPERATOR_CIDR}"]')
    return tf_initialised.show_json("tfplan")


def test_plan_creates_the_whole_stack_with_aws_only(plan: dict):
    after = _after(plan)
    actions = {rc["address"]: rc["change"]["actions"] for rc in plan["resource_changes"]}
    assert all(a in (["create"], ["read"]) for a in actions.values()), actions
    assert {rc["provider_name"] for rc in plan["resource_changes"]} == {AWS_PROVIDER}
    expected = {
        "aws_vpc.this", "aws_internet_gateway.this", "aws_nat_gateway.this[0]",
        "aws_subnet.public[0]", "aws_subnet.public[1]",
        "aws_subnet.private[0]", "aws_subnet.private[1]",
        "aws_route_table.public", "aws_route_table.private[0]", "aws_route_table.private[1]",
        "aws_route.public_internet", "aws_route.private_nat[0]", "aws_route.private_nat[1]",
        "aws_eks_cluster.this", 'aws_eks_node_group.this["cpu"]', 'aws_eks_node_group.this["gpu"]',
        "aws_iam_openid_connect_provider.eks", "aws_eks_addon.ebs_csi[0]",
        "aws_db_instance.this", "aws_kms_key.eks", "aws_kms_key.data",
        *(f'aws_s3_bucket.this["{b}"]' for b in BUCKET_KEYS),
        *(f'aws_ecr_repository.this["{r}"]' for r in ECR_REPOSITORIES),
        *(f'aws_iam_role.irsa["{r}"]' for r in IRSA_ROLES),
        *(f'aws_iam_role_policy.irsa["{r}"]' for r in IRSA_ROLES if r != "ebs-csi"),
        "aws_iam_role_policy_attachment.ebs_csi",
    }
    assert expected <= after.keys(), sorted(expected - after.keys())
    # two AZs, public and private subnets in each
    subnets = [after[f"aws_subnet.{kind}[{i}]"] for kind in ("public", "private") for i in (0, 1)]
    assert len({s["availability_zone"] for s in subnets}) == 2
    assert not any(s["map_public_ip_on_launch"] for s in subnets)
    assert after["aws_subnet.public[0]"]["tags"]["kubernetes.io/role/elb"] == "1"
    assert after["aws_subnet.private[0]"]["tags"]["kubernetes.io/role/internal-elb"] == "1"
    assert after["aws_route.public_internet"]["destination_cidr_block"] == "0.0.0.0/0"
    exprs = _expressions(plan)
    assert "aws_internet_gateway.this" in exprs["aws_route.public_internet"]["gateway_id"]["references"]
    assert "aws_nat_gateway.this" in exprs["aws_route.private_nat"]["nat_gateway_id"]["references"]


def test_plan_gpu_node_group_scales_from_zero_and_is_tainted(plan: dict):
    gpu = _after(plan)['aws_eks_node_group.this["gpu"]']
    assert gpu["ami_type"] in {"AL2023_x86_64_NVIDIA", "AL2_x86_64_GPU"}
    assert gpu["scaling_config"][0]["min_size"] == 0
    assert gpu["scaling_config"][0]["desired_size"] == 0
    assert gpu["scaling_config"][0]["max_size"] >= 1
    assert gpu["taint"] == [GPU_TAINT]
    assert gpu["labels"] == GPU_LABEL
    assert all(t.startswith(("g", "p")) for t in gpu["instance_types"]), gpu["instance_types"]
    exprs = _expressions(plan)["aws_eks_node_group.this"]
    assert "aws_subnet.private" in exprs["subnet_ids"]["references"]


def test_plan_cpu_node_group_is_untainted_and_always_on(plan: dict):
    cpu = _after(plan)['aws_eks_node_group.this["cpu"]']
    assert cpu["ami_type"] == "AL2023_x86_64_STANDARD"
    assert cpu["scaling_config"][0]["min_size"] >= 1
    assert not cpu.get("taint")
    assert cpu["labels"] == {"marketsearch/node-pool": "cpu"}


def test_plan_launch_templates_encrypt_disks_and_require_imdsv2(plan: dict):
    after = _after(plan)
    for pool in ("cpu", "gpu"):
        lt = after[f'aws_launch_template.node["{pool}"]']
        ebs = lt["block_device_mappings"][0]["ebs"][0]
        assert ebs["encrypted"] == "true" and ebs["volume_type"] == "gp3"
        meta = lt["metadata_options"][0]
        assert meta["http_tokens"] == "required" and meta["http_put_response_hop_limit"] == 1


def test_plan_autoscaler_tags_for_scale_from_zero(plan: dict):
    """The GPU group's Auto Scaling group carries the node-template tags the
    cluster-autoscaler needs to scale it up from zero nodes."""
    tags: dict[str, dict[str, str]] = {}
    for address, after in _after(plan).items():
        if address.startswith("aws_autoscaling_group_tag.node_template["):
            group = address.split('["', 1)[1].split("|", 1)[0]
            (tag,) = after["tag"]
            assert tag["propagate_at_launch"] is False
            tags.setdefault(group, {})[tag["key"]] = tag["value"]
    gpu = tags["gpu"]
    assert gpu["k8s.io/cluster-autoscaler/enabled"] == "true"
    assert gpu["k8s.io/cluster-autoscaler/marketsearch"] == "owned"
    assert gpu["k8s.io/cluster-autoscaler/node-template/label/marketsearch/node-pool"] == "gpu"
    assert gpu["k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"] == "true:NoSchedule"
    assert gpu["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"] == "1"
    assert tags["cpu"]["k8s.io/cluster-autoscaler/node-template/label/marketsearch/node-pool"] == "cpu"


def test_plan_eks_endpoint_encryption_and_logging(plan: dict):
    after = _after(plan)
    cluster = after["aws_eks_cluster.this"]
    vpc = cluster["vpc_config"][0]
    assert vpc["endpoint_private_access"] is True
    assert vpc["endpoint_public_access"] is True
    assert vpc["public_access_cidrs"] == [OPERATOR_CIDR]
    assert cluster["encryption_config"][0]["resources"] == ["secrets"]
    assert set(cluster["enabled_cluster_log_types"]) == {
        "api", "audit", "authenticator", "controllerManager", "scheduler"}
    assert cluster["access_config"][0]["authentication_mode"] == "API"
    exprs = _expressions(plan)["aws_eks_cluster.this"]
    assert "aws_kms_key.eks" in exprs["encryption_config"][0]["provider"][0]["key_arn"]["references"]
    log_group = after["aws_cloudwatch_log_group.eks"]
    assert log_group["name"] == "/aws/eks/marketsearch/cluster"
    assert log_group["retention_in_days"] >= 90


def test_plan_kms_keys_rotate(plan: dict):
    after = _after(plan)
    for key in ("eks", "data"):
        assert after[f"aws_kms_key.{key}"]["enable_key_rotation"] is True
        policy = json.loads(after[f"aws_kms_key.{key}"]["policy"])
        assert all(s["Principal"] != "*" and s["Principal"] != {"AWS": "*"}
                   for s in policy["Statement"])


def test_plan_buckets_private_versioned_kms_encrypted_tls_only(plan: dict):
    after = _after(plan)
    for key in BUCKET_KEYS:
        bucket = after[f'aws_s3_bucket.this["{key}"]']
        assert bucket["bucket"].startswith(f"marketsearch-{key}-")
        assert bucket["force_destroy"] is False
        pab = after[f'aws_s3_bucket_public_access_block.this["{key}"]']
        assert all(pab[k] is True for k in ("block_public_acls", "block_public_policy",
                                            "ignore_public_acls", "restrict_public_buckets"))
        versioning = after[f'aws_s3_bucket_versioning.this["{key}"]']
        assert versioning["versioning_configuration"][0]["status"] == "Enabled"
        sse = after[f'aws_s3_bucket_server_side_encryption_configuration.this["{key}"]']["rule"][0]
        assert sse["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "aws:kms"
        assert sse["bucket_key_enabled"] is True
        ownership = after[f'aws_s3_bucket_ownership_controls.this["{key}"]']
        assert ownership["rule"][0]["object_ownership"] == "BucketOwnerEnforced"
        policy = after[f'data.aws_iam_policy_document.bucket_tls_only["{key}"]']
        deny_http = [s for s in policy["statement"] if s["effect"] == "Deny"
                     and {"test": "Bool", "values": ["false"], "variable": "aws:SecureTransport"}
                     in s["condition"]]
        assert deny_http and deny_http[0]["actions"] == ["s3:*"]
        assert deny_http[0]["principals"] == [{"identifiers": ["*"], "type": "*"}]
    exprs = _expressions(plan)
    sse_key = exprs["aws_s3_bucket_server_side_encryption_configuration.this"]["rule"][0][
        "apply_server_side_encryption_by_default"][0]["kms_master_key_id"]["references"]
    assert "aws_kms_key.data" in sse_key
    assert "data.aws_iam_policy_document.bucket_tls_only" in \
        exprs["aws_s3_bucket_policy.this"]["policy"]["references"]


def test_plan_rds_private_encrypted_managed_password_nodes_only(plan: dict):
    after = _after(plan)
    db = after["aws_db_instance.this"]
    assert db["engine"] == "postgres"
    assert db["storage_encrypted"] is True
    assert db["publicly_accessible"] is False
    assert db["manage_master_user_password"] is True
    assert db.get("password") is None
    assert db["deletion_protection"] is True
    assert db["iam_database_authentication_enabled"] is True
    assert db["backup_retention_period"] >= 7
    exprs = _expressions(plan)
    assert "aws_subnet.private" in exprs["aws_db_subnet_group.this"]["subnet_ids"]["references"]
    assert "aws_security_group.rds" in \
        exprs["aws_db_instance.this"]["vpc_security_group_ids"]["references"]
    # The RDS security group admits exactly one source: the nodes' group, on 5432.
    assert "ingress" not in exprs["aws_security_group.rds"]
    rules = {addr: e for addr, e in exprs.items()
             if addr.startswith(("aws_vpc_security_group_ingress_rule.", "aws_security_group_rule."))
             and "aws_security_group.rds" in e.get("security_group_id", {}).get("references", [])}
    assert list(rules) == ["aws_vpc_security_group_ingress_rule.rds_from_nodes"]
    rule = after["aws_vpc_security_group_ingress_rule.rds_from_nodes"]
    assert (rule["from_port"], rule["to_port"], rule["ip_protocol"]) == (5432, 5432, "tcp")
    assert rule.get("cidr_ipv4") is None and rule.get("cidr_ipv6") is None
    source = rules["aws_vpc_security_group_ingress_rule.rds_from_nodes"]
    assert "aws_security_group.node" in source["referenced_security_group_id"]["references"]
    # ... and the nodes carry that group.
    assert "local.node_security_group_ids" in \
        exprs["aws_launch_template.node"]["vpc_security_group_ids"]["references"]
    params = {p["name"]: p["value"] for p in after["aws_db_parameter_group.this"]["parameter"]}
    assert params["rds.force_ssl"] == "1"


def test_plan_ecr_repositories(plan: dict):
    after = _after(plan)
    for name in ECR_REPOSITORIES:
        repo = after[f'aws_ecr_repository.this["{name}"]']
        assert repo["name"] == f"marketsearch/{name}"
        assert repo["image_tag_mutability"] == "IMMUTABLE"
        assert repo["image_scanning_configuration"] == [{"scan_on_push": True}]
        assert repo["encryption_configuration"][0]["encryption_type"] == "KMS"
        assert repo["force_delete"] is False


def test_plan_irsa_trust_is_scoped_to_service_accounts(plan: dict):
    after = _after(plan)

    def subjects(role: str) -> set[str]:
        doc = after[f'data.aws_iam_policy_document.irsa_trust["{role}"]']
        (statement,) = doc["statement"]
        assert statement["actions"] == ["sts:AssumeRoleWithWebIdentity"]
        assert statement["principals"][0]["type"] == "Federated"
        conditions = statement["condition"]
        assert {c["test"] for c in conditions} == {"StringEquals"}
        assert ["sts.amazonaws.com"] in [c["values"] for c in conditions]
        (subs,) = [c["values"] for c in conditions if c["values"] != ["sts.amazonaws.com"]]
        return set(subs)

    assert subjects("pipeline") == PIPELINE_SUBJECTS
    assert subjects("model-server") == MODEL_SERVER_SUBJECTS
    assert subjects("cluster-autoscaler") == {"system:serviceaccount:kube-system:cluster-autoscaler"}
    assert subjects("ebs-csi") == {"system:serviceaccount:kube-system:ebs-csi-controller-sa"}
    exprs = _expressions(plan)['data.aws_iam_policy_document.irsa_trust']["statement"][0]
    assert "aws_iam_openid_connect_provider.eks" in \
        exprs["principals"][0]["identifiers"]["references"]


def test_plan_irsa_permissions_are_least_privilege(plan: dict):
    after = _after(plan)
    exprs = _expressions(plan)

    def statements(*docs: str) -> list[dict]:
        return [s for doc in docs for s in after[f"data.aws_iam_policy_document.{doc}"]["statement"]]

    def actions(*docs: str) -> set[str]:
        return {a for s in statements(*docs) for a in s["actions"]}

    # Every role's inline policy is its own document: the S3 ones from irsa_s3, the pipeline's
    # (irsa_s3["pipeline"] + ECR) and the cluster-autoscaler's.
    (policies,) = [r for r in plan["configuration"]["root_module"]["resources"]
                   if r["address"] == "aws_iam_role_policy.irsa"]
    assert "local.irsa_policies" in policies["for_each_expression"]["references"]
    assert "aws_iam_role.irsa" in policies["expressions"]["role"]["references"]
    assert {a for a in after if a.startswith("aws_iam_role_policy.irsa[")} == {
        f'aws_iam_role_policy.irsa["{r}"]' for r in IRSA_ROLES if r != "ebs-csi"}

    # The pipeline: both buckets, the data key through S3, pulls from ECR.
    pipeline_docs = ('irsa_s3["pipeline"]', "pipeline")
    pipeline = actions(*pipeline_docs)
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "ecr:BatchGetImage",
            "ecr:GetDownloadUrlForLayer", "ecr:GetAuthorizationToken"} <= pipeline
    assert all(a.split(":")[0] in {"s3", "ecr", "kms"} and "*" not in a for a in pipeline), pipeline
    # "*" only where the action has no resource-level permissions
    for statement in statements(*pipeline_docs):
        if statement["resources"] == ["*"]:
            assert statement["actions"] == ["ecr:GetAuthorizationToken"]
    assert 'data.aws_iam_policy_document.irsa_s3["pipeline"]' in \
        exprs["data.aws_iam_policy_document.pipeline"]["source_policy_documents"]["references"]
    pipeline_refs = {ref for doc in ("irsa_s3", "pipeline")
                     for s in exprs[f"data.aws_iam_policy_document.{doc}"]["statement"]
                     for ref in s["resources"].get("references", [])}
    assert {"local.bucket_arns", "local.ecr_repository_arns", "aws_kms_key.data"} <= pipeline_refs
    s3_statements = [s for s in statements('irsa_s3["pipeline"]') if s["sid"] != "BucketKeyThroughS3"]
    assert [len(s["resources"]) for s in s3_statements] == [2, 2]  # both buckets

    # The model server reads the artifacts bucket only (the ARNs are pinned after the apply).
    model_server = actions('irsa_s3["model-server"]')
    assert model_server == {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket",
                            "s3:GetBucketLocation", "kms:Decrypt"}
    assert [len(s["resources"]) for s in statements('irsa_s3["model-server"]')] == [1, 1, 1]
    # MLflow reads and writes the artifacts bucket only.
    mlflow = actions('irsa_s3["mlflow"]')
    assert {"s3:GetObject", "s3:PutObject", "kms:GenerateDataKey"} <= mlflow
    assert all(a.split(":")[0] in {"s3", "kms"} and "*" not in a for a in mlflow), mlflow
    assert [len(s["resources"]) for s in statements('irsa_s3["mlflow"]')] == [1, 1, 1]
    # Every S3 document uses the data key only through S3.
    for role in ("pipeline", "model-server", "mlflow"):
        (kms,) = [s for s in statements(f'irsa_s3["{role}"]') if s["actions"][0].startswith("kms:")]
        assert kms["condition"] == [{"test": "StringEquals", "variable": "kms:ViaService",
                                     "values": ["s3.eu-west-2.amazonaws.com"]}]
    kms_refs = exprs["data.aws_iam_policy_document.irsa_s3"]["statement"][2]["resources"]
    assert kms_refs["references"][0] == "aws_kms_key.data.arn"


def test_plan_outputs(plan: dict):
    assert REQUIRED_OUTPUTS <= plan["output_changes"].keys()
    assert plan["planned_values"]["outputs"]["cluster_name"]["value"] == "marketsearch"
    assert plan["planned_values"]["outputs"]["region"]["value"] == "eu-west-2"


def test_world_open_public_endpoint_is_refused(tf_initialised: Terraform, moto_server: MotoServer):
    tf_initialised.point_at(moto_server.url)
    proc = tf_initialised.run("plan", "-input=false", "-no-color", "-lock=false",
                              "-var", 'cluster_endpoint_public_access_cidrs=["0.0.0.0/0"]',
                              check=False, timeout=120)
    assert proc.returncode != 0
    assert "Refusing 0.0.0.0/0" in proc.stderr + proc.stdout



@pytest.mark.parametrize("cidr", ["203.0.113.7", "203.0.113.7/33", " 203.0.113.7/32", "none"])
def test_a_public_endpoint_entry_that_is_not_a_cidr_is_refused_at_plan(
        tf_initialised: Terraform, moto_server: MotoServer, cidr: str):
    """Caught before anything is created, not at EKS CreateCluster after the VPC and RDS."""
    tf_initialised.point_at(moto_server.url)
    proc = tf_initialised.run("plan", "-input=false", "-no-color", "-lock=false",
                              "-var", f'cluster_endpoint_public_access_cidrs=["{cidr}"]',
                              check=False, timeout=120)
    assert proc.returncode != 0
    assert "must be an IPv4 CIDR such as 203.0.113.7/32" in proc.stderr + proc.stdout


# --- apply and destroy against moto -------------------------------------------------------

# Left out of the apply because moto does not emulate them (both are planned, and asserted on,
# above): the aws-ebs-csi-driver EKS add-on (moto has no EKS add-on API) and the tags on the
# node groups' Auto Scaling groups (moto's EKS does not create the groups in its Auto Scaling
# backend, so tagging them fails). allow_destroy=true is what `make destroy-cluster` applies
# before `terraform destroy`; it is set from the start here to save a second apply.
MOTO_APPLY_VARS = (
    "-var", "enable_ebs_csi_driver=false",
    "-var", "tag_node_group_asgs=false",
    "-var", "allow_destroy=true",
    "-var", "db_final_snapshot_identifier=marketsearch-postgres-final-test",
)


def test_apply_and_destroy_against_moto(terraform_bin: str, tmp_path):
    """`terraform apply` then `terraform destroy` of the whole stack against a fresh moto server
    (about 3 minutes, mostly the provider's fixed RDS and S3 lifecycle waits): VPC, NAT, EKS
    cluster, both node groups and launch templates, OIDC provider and IRSA roles, KMS keys,
    buckets with their policies, RDS with its RDS-managed Secrets Manager secret, ECR.
    Excluded (moto lacks them): the EBS CSI add-on and the Auto Scaling group tags."""
    import boto3

    server = MotoServer(tmp_path)
    try:
        tf = Terraform(terraform_bin, copy_terraform(tmp_path / "terraform"))
        tf.init()
        tf.point_at(server.url)
        tf.run("apply", "-input=false", "-no-color", "-auto-approve", *MOTO_APPLY_VARS,
               timeout=600)

        state = _state_resources(tf.show_json())
        outputs = {k: v["value"] for k, v in
                   json.loads(tf.run("output", "-json", "-no-color").stdout).items()}
        assert REQUIRED_OUTPUTS <= outputs.keys()
        assert outputs["cluster_name"] == "marketsearch"
        assert set(outputs["ecr_repository_urls"]) == set(ECR_REPOSITORIES)
        assert outputs["rds_master_secret_arn"].startswith("arn:aws:secretsmanager:eu-west-2:")

        # IRSA trust policies, as created: the cluster's OIDC provider, one audience, the
        # listed service accounts only.
        oidc = state["aws_iam_openid_connect_provider.eks"]
        issuer = oidc["url"].removeprefix("https://")
        for role, subjects in (("pipeline", PIPELINE_SUBJECTS),
                               ("model-server", MODEL_SERVER_SUBJECTS)):
            (statement,) = _statements(state[f'aws_iam_role.irsa["{role}"]']["assume_role_policy"])
            assert statement["Principal"] == {"Federated": oidc["arn"]}
            cond = statement["Condition"]["StringEquals"]
            assert set(_as_list(cond[f"{issuer}:sub"])) == subjects
            assert cond[f"{issuer}:aud"] == "sts.amazonaws.com"

        # Permissions: the model server reads the artifacts bucket and nothing else.
        artifacts_arn = state['aws_s3_bucket.this["artifacts"]']["arn"]
        data_arn = state['aws_s3_bucket.this["data"]']["arn"]
        model_server = _statements(state['aws_iam_role_policy.irsa["model-server"]']["policy"])
        s3_resources = {r for s in model_server for r in _as_list(s["Resource"])
                        if r.startswith("arn:aws:s3")}
        assert s3_resources == {artifacts_arn, f"{artifacts_arn}/*"}
        pipeline = _statements(state['aws_iam_role_policy.irsa["pipeline"]']["policy"])
        pipeline_resources = {r for s in pipeline for r in _as_list(s["Resource"])}
        assert {data_arn, f"{data_arn}/*", artifacts_arn, f"{artifacts_arn}/*"} <= pipeline_resources
        assert {repo["arn"] for addr, repo in state.items()
                if addr.startswith("aws_ecr_repository.this")} <= pipeline_resources

        db = state["aws_db_instance.this"]
        assert db["storage_encrypted"] is True and db["publicly_accessible"] is False
        gpu = state['aws_eks_node_group.this["gpu"]']
        assert gpu["taint"] == [GPU_TAINT] and gpu["scaling_config"][0]["min_size"] == 0

        # What moto now holds, seen through the AWS API.
        aws = dict(endpoint_url=server.url, region_name="eu-west-2",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
        secret = boto3.client("secretsmanager", **aws).describe_secret(
            SecretId=outputs["rds_master_secret_arn"])
        assert secret["ARN"] == outputs["rds_master_secret_arn"]
        s3 = boto3.client("s3", **aws)
        for bucket in (outputs["data_bucket"], outputs["artifacts_bucket"]):
            assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
            pab = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
            assert all(pab.values())
            assert "aws:SecureTransport" in s3.get_bucket_policy(Bucket=bucket)["Policy"]
        nodegroup = boto3.client("eks", **aws).describe_nodegroup(
            clusterName="marketsearch", nodegroupName="marketsearch-gpu")["nodegroup"]
        assert nodegroup["scalingConfig"]["minSize"] == 0
        assert nodegroup["labels"] == GPU_LABEL

        tf.run("destroy", "-input=false", "-no-color", "-auto-approve", *MOTO_APPLY_VARS,
               timeout=600)
        assert tf.run("state", "list", "-no-color").stdout.strip() == ""
        assert boto3.client("eks", **aws).list_clusters()["clusters"] == []
        assert s3.list_buckets()["Buckets"] == []
        assert boto3.client("rds", **aws).describe_db_instances()["DBInstances"] == []
    finally:
        server.stop()
