# Two managed node groups in the private subnets:
#   cpu - always on (min var.cpu_min_size): system pods, KFP, MLflow, KServe, data stages;
#   gpu - scales from zero: EKS-optimised AL2023 NVIDIA AMI (driver and container toolkit
#         built in), tainted nvidia.com/gpu=true:NoSchedule and labelled
#         marketsearch/node-pool=gpu, so only pods that tolerate the taint and select the label
#         (the training steps) land there, and the cluster-autoscaler adds a node when such a
#         pod is pending and removes it when idle.
# Both get their root volume, IMDS settings and security groups from a launch template. The
# pools differ only in the settings of local.node_pools: one launch template, node group and
# set of autoscaler tags per entry.

resource "aws_iam_role" "node" {
  name               = "${local.name}-eks-node"
  assume_role_policy = data.aws_iam_policy_document.service_assume["ec2"].json
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    # kubelet pulls the pipeline and serving images from ECR
    "AmazonEC2ContainerRegistryPullOnly",
    # shell access through SSM Session Manager instead of SSH keys
    "AmazonSSMManagedInstanceCore",
  ])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}

# Marks the nodes (and the pods on them, which share the node's ENIs under the VPC CNI): RDS
# admits PostgreSQL from this group only. It has no rules of its own; node-to-node and
# control-plane traffic is allowed by the EKS cluster security group, attached alongside.
resource "aws_security_group" "node" {
  #checkov:skip=CKV2_AWS_5:Attached to the nodes through the launch templates below.
  name        = "${local.name}-eks-node"
  description = "EKS worker nodes of ${local.cluster_name}; referenced by the RDS security group"
  vpc_id      = aws_vpc.this.id

  tags = {
    Name = "${local.name}-eks-node"
  }
}

# The two pools. Everything that differs between them is here; the launch template, node
# group and autoscaler tags below are written once, for_each over this map.
locals {
  node_pool_label = "marketsearch/node-pool"

  node_pools = {
    cpu = {
      ami_type       = "AL2023_x86_64_STANDARD"
      capacity_type  = var.cpu_capacity_type
      instance_types = var.cpu_instance_types
      min_size       = var.cpu_min_size
      desired_size   = var.cpu_desired_size
      max_size       = var.cpu_max_size
      disk_size      = var.cpu_disk_size
      taints         = []
      # extended resources advertised to the cluster-autoscaler while the group is at zero
      node_resources = {}
    }
    gpu = {
      ami_type       = "AL2023_x86_64_NVIDIA"
      capacity_type  = var.gpu_capacity_type
      instance_types = var.gpu_instance_types
      min_size       = var.gpu_min_size
      desired_size   = var.gpu_min_size
      max_size       = var.gpu_max_size
      disk_size      = var.gpu_disk_size
      taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
      node_resources = { "nvidia.com/gpu" = var.gpus_per_node }
    }
  }

  # The cluster security group is what EKS would attach had we given no security groups; it
  # is empty only where EKS is emulated (the moto-based tests).
  node_security_group_ids = compact([
    aws_eks_cluster.this.vpc_config[0].cluster_security_group_id,
    aws_security_group.node.id,
  ])
}

resource "aws_launch_template" "node" {
  for_each = local.node_pools

  name_prefix            = "${local.name}-${each.key}-"
  description            = "EKS ${each.key} nodes of ${local.cluster_name}"
  update_default_version = true
  vpc_security_group_ids = local.node_security_group_ids

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = each.value.disk_size
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  # IMDSv2 only, and a hop limit of 1 so that pods cannot borrow the node role's credentials:
  # they get their own through IRSA.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  dynamic "tag_specifications" {
    for_each = ["instance", "volume"]

    content {
      resource_type = tag_specifications.value
      tags = merge(local.tags, {
        Name = "${local.cluster_name}-${each.key}"
      })
    }
  }
}

resource "aws_eks_node_group" "this" {
  for_each = local.node_pools

  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "${local.name}-${each.key}"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  ami_type        = each.value.ami_type
  capacity_type   = each.value.capacity_type
  instance_types  = each.value.instance_types

  scaling_config {
    min_size     = each.value.min_size
    desired_size = each.value.desired_size
    max_size     = each.value.max_size
  }

  update_config {
    max_unavailable = 1
  }

  launch_template {
    id      = aws_launch_template.node[each.key].id
    version = aws_launch_template.node[each.key].latest_version
  }

  labels = {
    (local.node_pool_label) = each.key
  }

  dynamic "taint" {
    for_each = each.value.taints

    content {
      key    = taint.value.key
      value  = taint.value.value
      effect = taint.value.effect
    }
  }

  # The cluster-autoscaler owns desired_size once the group exists.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}

# EKS tags each managed group's Auto Scaling group with the auto-discovery tags
# (k8s.io/cluster-autoscaler/enabled and .../<cluster>) itself, but a group at zero nodes has
# no node to read labels, taints and GPUs from: the autoscaler takes them from these
# node-template tags. The same tags are written for every group, auto-discovery included,
# so nothing depends on EKS's defaults.
locals {
  # node_pools' taint effects as the autoscaler's node-template tags spell them
  taint_effects = {
    NO_SCHEDULE        = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE         = "NoExecute"
  }

  autoscaler_asg_tags = {
    for pool, settings in local.node_pools : pool => merge(
      {
        "k8s.io/cluster-autoscaler/enabled"                                      = "true"
        "k8s.io/cluster-autoscaler/${local.cluster_name}"                        = "owned"
        "k8s.io/cluster-autoscaler/node-template/label/${local.node_pool_label}" = pool
      },
      {
        for t in settings.taints :
        "k8s.io/cluster-autoscaler/node-template/taint/${t.key}" => "${t.value}:${local.taint_effects[t.effect]}"
      },
      {
        for resource, quantity in settings.node_resources :
        "k8s.io/cluster-autoscaler/node-template/resources/${resource}" => tostring(quantity)
      },
    )
  }

  # One aws_autoscaling_group_tag per (pool, tag): "<pool>|<tag key>".
  autoscaler_asg_tag_list = var.tag_node_group_asgs ? merge([
    for pool, tags in local.autoscaler_asg_tags : {
      for key, value in tags : "${pool}|${key}" => { pool = pool, key = key, value = value }
    }
  ]...) : {}
}

resource "aws_autoscaling_group_tag" "node_template" {
  for_each = local.autoscaler_asg_tag_list

  autoscaling_group_name = aws_eks_node_group.this[each.value.pool].resources[0].autoscaling_groups[0].name

  tag {
    key                 = each.value.key
    value               = each.value.value
    propagate_at_launch = false
  }
}
