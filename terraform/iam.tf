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

  irsa_service_accounts = {
    "pipeline"           = var.pipeline_service_accounts
    "model-server"       = var.model_server_service_accounts
    "mlflow"             = var.mlflow_service_accounts
    "cluster-autoscaler" = ["kube-system:cluster-autoscaler"]
    "ebs-csi"            = ["kube-system:ebs-csi-controller-sa"]
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

# --- pipeline: read/write both buckets, pull from ECR ----------------------------------------

data "aws_iam_policy_document" "pipeline" {
  statement {
    sid       = "ListBuckets"
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = values(local.bucket_arns)
  }

  statement {
    sid    = "ReadWriteObjects"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:GetObjectVersion",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [for arn in values(local.bucket_arns) : "${arn}/*"]
  }

  statement {
    sid       = "BucketKeyThroughS3"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.${local.dns_suffix}"]
    }
  }

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

resource "aws_iam_role_policy" "pipeline" {
  name   = "pipeline"
  role   = aws_iam_role.irsa["pipeline"].id
  policy = data.aws_iam_policy_document.pipeline.json
}

# --- model server: read the artifacts bucket only ----------------------------------------------

data "aws_iam_policy_document" "model_server" {
  statement {
    sid       = "ListArtifacts"
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [local.bucket_arns["artifacts"]]
  }

  statement {
    sid       = "ReadArtifacts"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${local.bucket_arns["artifacts"]}/*"]
  }

  statement {
    sid       = "BucketKeyThroughS3"
    effect    = "Allow"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.data.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role_policy" "model_server" {
  name   = "model-server"
  role   = aws_iam_role.irsa["model-server"].id
  policy = data.aws_iam_policy_document.model_server.json
}

# --- MLflow tracking server: read/write the artifacts bucket ----------------------------------

data "aws_iam_policy_document" "mlflow" {
  statement {
    sid       = "ListArtifacts"
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [local.bucket_arns["artifacts"]]
  }

  statement {
    sid    = "ReadWriteArtifacts"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:GetObjectVersion",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
    ]
    resources = ["${local.bucket_arns["artifacts"]}/*"]
  }

  statement {
    sid       = "BucketKeyThroughS3"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.${local.dns_suffix}"]
    }
  }
}

resource "aws_iam_role_policy" "mlflow" {
  name   = "mlflow"
  role   = aws_iam_role.irsa["mlflow"].id
  policy = data.aws_iam_policy_document.mlflow.json
}

# --- cluster-autoscaler: discover every group, change only this cluster's -----------------------

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

resource "aws_iam_role_policy" "cluster_autoscaler" {
  name   = "cluster-autoscaler"
  role   = aws_iam_role.irsa["cluster-autoscaler"].id
  policy = data.aws_iam_policy_document.cluster_autoscaler.json
}

# --- EBS CSI driver ---------------------------------------------------------------------------

resource "aws_iam_role_policy_attachment" "ebs_csi" {
  role       = aws_iam_role.irsa["ebs-csi"].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
}
