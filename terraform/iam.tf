# IRSA: the cluster's OIDC issuer as an IAM identity provider, and one role per workload,
# each assumable only by the listed Kubernetes service accounts ("namespace:name"):
#
#   role                               service accounts (defaults)                 may
#   <name>-irsa-pipeline               kubeflow:pipeline-runner,                   read/write the data and artifacts
#                                      marketsearch:pipeline-runner                buckets; pull from the ECR repositories
#   <name>-irsa-model-server           marketsearch:model-server                   read the artifacts bucket
#   <name>-irsa-mlflow                 marketsearch:mlflow                         read/write the artifacts bucket
#   <name>-irsa-cluster-autoscaler     kube-system:cluster-autoscaler              scale this cluster's node groups
#   <name>-irsa-ebs-csi                kube-system:ebs-csi-controller-sa           manage EBS volumes (AWS managed policy)
#
# A service account uses its role once annotated with
#   eks.amazonaws.com/role-arn: <the role ARN, terraform output irsa_role_arns>
# which scripts/deploy_cluster.sh does.

resource "aws_iam_openid_connect_provider" "eks" {
  url            = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list = ["sts.${local.dns_suffix}"]
  # No thumbprint_list: IAM trusts the EKS OIDC issuers' certificate authority itself.
}

locals {
  oidc_issuer = replace(aws_iam_openid_connect_provider.eks.url, "https://", "")

  # Who may assume each role: "namespace:name" service accounts.
  irsa_service_accounts = {
    "pipeline"           = var.pipeline_service_accounts
    "model-server"       = var.model_server_service_accounts
    "mlflow"             = var.mlflow_service_accounts
    "cluster-autoscaler" = ["kube-system:cluster-autoscaler"]
    "ebs-csi"            = ["kube-system:ebs-csi-controller-sa"]
  }

  # Each role's inline policy (documents below); ebs-csi has an AWS managed policy instead.
  irsa_policies = {
    "pipeline"           = data.aws_iam_policy_document.pipeline.json
    "model-server"       = data.aws_iam_policy_document.irsa_s3["model-server"].json
    "mlflow"             = data.aws_iam_policy_document.irsa_s3["mlflow"].json
    "cluster-autoscaler" = data.aws_iam_policy_document.cluster_autoscaler.json
  }

  bucket_arns         = { for key, bucket in aws_s3_bucket.this : key => bucket.arn }
  ecr_repository_arns = [for repo in aws_ecr_repository.this : repo.arn]
}

data "aws_iam_policy_document" "irsa_trust" {
  for_each = local.irsa_service_accounts

  statement {
    sid     = "ServiceAccounts"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = [for sa in each.value : "system:serviceaccount:${sa}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role" "irsa" {
  for_each = local.irsa_service_accounts

  name               = "${local.name}-irsa-${each.key}"
  description        = "IRSA role for ${join(", ", each.value)}"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust[each.key].json
}

resource "aws_iam_role_policy" "irsa" {
  for_each = local.irsa_policies

  name   = each.key
  role   = aws_iam_role.irsa[each.key].id
  policy = each.value
}

resource "aws_iam_role_policy_attachment" "ebs_csi" {
  role       = aws_iam_role.irsa["ebs-csi"].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
}

# --- S3: pipeline, model server, MLflow ------------------------------------------------------

# What each workload may do in which buckets. The data KMS key is usable only through S3:
# kms:Decrypt to read, kms:GenerateDataKey as well to write.
locals {
  s3_object_read  = ["s3:GetObject", "s3:GetObjectVersion"]
  s3_object_write = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]

  irsa_s3_access = {
    # read/write both buckets (multipart uploads of large exports included); in the data
    # bucket, cache/shards and cache/photo_features are the shard and photo-feature caches
    "pipeline" = {
      buckets        = ["data", "artifacts"]
      bucket_actions = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
      object_actions = concat(local.s3_object_read, local.s3_object_write, ["s3:ListMultipartUploadParts"])
      kms_actions    = ["kms:Decrypt", "kms:GenerateDataKey"]
    }
    # read the artifacts bucket only
    "model-server" = {
      buckets        = ["artifacts"]
      bucket_actions = ["s3:ListBucket", "s3:GetBucketLocation"]
      object_actions = local.s3_object_read
      kms_actions    = ["kms:Decrypt"]
    }
    # read/write the artifacts bucket (MLflow's artifact store)
    "mlflow" = {
      buckets        = ["artifacts"]
      bucket_actions = ["s3:ListBucket", "s3:GetBucketLocation"]
      object_actions = concat(local.s3_object_read, local.s3_object_write)
      kms_actions    = ["kms:Decrypt", "kms:GenerateDataKey"]
    }
  }
}

data "aws_iam_policy_document" "irsa_s3" {
  for_each = local.irsa_s3_access

  statement {
    sid       = "ListBuckets"
    effect    = "Allow"
    actions   = each.value.bucket_actions
    resources = [for b in each.value.buckets : local.bucket_arns[b]]
  }

  statement {
    sid       = "Objects"
    effect    = "Allow"
    actions   = each.value.object_actions
    resources = [for b in each.value.buckets : "${local.bucket_arns[b]}/*"]
  }

  statement {
    sid       = "BucketKeyThroughS3"
    effect    = "Allow"
    actions   = each.value.kms_actions
    resources = [aws_kms_key.data.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.${local.dns_suffix}"]
    }
  }
}

# The pipeline also pulls its images from the ECR repositories.
data "aws_iam_policy_document" "pipeline" {
  source_policy_documents = [data.aws_iam_policy_document.irsa_s3["pipeline"].json]

  statement {
    sid       = "EcrLogin"
    effect    = "Allow"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # the action has no resource-level permissions
  }

  statement {
    sid    = "EcrPull"
    effect = "Allow"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = local.ecr_repository_arns
  }
}

# --- cluster-autoscaler: discover every group, change only this cluster's --------------------

data "aws_iam_policy_document" "cluster_autoscaler" {
  statement {
    sid    = "Discover"
    effect = "Allow"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"] # Describe* calls have no resource-level permissions
  }

  statement {
    sid       = "DescribeNodegroups"
    effect    = "Allow"
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${local.partition}:eks:${var.region}:${local.account_id}:nodegroup/${local.cluster_name}/*/*"]
  }

  statement {
    sid    = "ScaleOwnGroups"
    effect = "Allow"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    resources = ["arn:${local.partition}:autoscaling:${var.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${local.cluster_name}"
      values   = ["owned"]
    }
  }
}
