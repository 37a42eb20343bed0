# Shared data sources and names used by every other file.

data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

# Trust policies of the two AWS-service roles: the EKS control plane (eks.tf, service eks) and
# the nodes (nodes.tf, service ec2).
data "aws_iam_policy_document" "service_assume" {
  for_each = {
    eks = ["sts:AssumeRole", "sts:TagSession"]
    ec2 = ["sts:AssumeRole"]
  }

  statement {
    effect  = "Allow"
    actions = each.value

    principals {
      type        = "Service"
      identifiers = ["${each.key}.${local.dns_suffix}"]
    }
  }
}

# The AZs are named, not "whatever the region lists": the subnets must not move if AWS adds a
# zone to the region.
data "aws_availability_zones" "selected" {
  state = "available"

  filter {
    name   = "zone-name"
    values = local.az_names
  }

  lifecycle {
    postcondition {
      condition     = length(self.names) == length(local.az_names)
      error_message = "Not every zone of ${join(", ", local.az_names)} is available in ${var.region}; set var.availability_zones."
    }
  }
}

locals {
  name         = var.name
  cluster_name = var.name
  partition    = data.aws_partition.current.partition
  account_id   = data.aws_caller_identity.current.account_id
  dns_suffix   = data.aws_partition.current.dns_suffix

  az_names = length(var.availability_zones) > 0 ? var.availability_zones : ["${var.region}a", "${var.region}b"]
  az_count = length(local.az_names)
  azs      = data.aws_availability_zones.selected.names

  tags = merge(
    {
      Project   = "marketsearch"
      ManagedBy = "terraform"
      Stack     = var.name
    },
    var.tags,
  )
}
