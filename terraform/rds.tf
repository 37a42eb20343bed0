# RDS PostgreSQL in the private subnets: not publicly accessible, storage encrypted with the
# data key, TLS enforced, reachable on 5432 only from the EKS nodes' security group. The
# master password is generated and rotated by RDS and kept in Secrets Manager
# (manage_master_user_password): it never appears in Terraform state or in git.
# scripts/deploy_cluster.sh reads the secret and writes the Kubernetes secret the pipeline uses.

locals {
  db_identifier                = "${local.name}-postgres"
  db_final_snapshot_identifier = coalesce(var.db_final_snapshot_identifier, "${local.name}-postgres-final")
  db_log_exports               = ["postgresql", "upgrade"]
}

resource "aws_db_subnet_group" "this" {
  name        = "${local.name}-postgres"
  description = "Private subnets of ${local.name}"
  subnet_ids  = aws_subnet.private[*].id
}

resource "aws_security_group" "rds" {
  name        = "${local.name}-postgres"
  description = "PostgreSQL from the EKS nodes of ${local.cluster_name} only"
  vpc_id      = aws_vpc.this.id

  tags = {
    Name = "${local.name}-postgres"
  }
}

resource "aws_vpc_security_group_ingress_rule" "rds_from_nodes" {
  security_group_id            = aws_security_group.rds.id
  description                  = "PostgreSQL from EKS nodes and pods"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.node.id
}

resource "aws_db_parameter_group" "this" {
  name_prefix = "${local.name}-postgres${var.postgres_version}-"
  family      = "postgres${var.postgres_version}"
  description = "${local.name}: TLS only, DDL and slow-query logging"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Created here so that retention and encryption are ours (RDS would create them without).
resource "aws_cloudwatch_log_group" "rds" {
  for_each = toset(local.db_log_exports)

  name              = "/aws/rds/instance/${local.db_identifier}/${each.value}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.data.arn
}

resource "aws_db_instance" "this" {
  #checkov:skip=CKV_AWS_157:Multi-AZ is var.db_multi_az (off by default: it doubles the cost of a dev/test stack); turn it on for production.
  #checkov:skip=CKV_AWS_118:Enhanced monitoring adds a role and per-instance CloudWatch cost; Performance Insights and the exported logs cover this stack.
  identifier     = local.db_identifier
  engine         = "postgres"
  engine_version = var.postgres_version
  instance_class = var.db_instance_class

  db_name                       = var.db_name
  username                      = var.db_username
  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.data.arn

  allocated_storage     = var.db_allocated_storage
  max_allocated_storage = var.db_max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.data.arn

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.rds.id]
  publicly_accessible    = false
  multi_az               = var.db_multi_az
  parameter_group_name   = aws_db_parameter_group.this.name

  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = local.db_log_exports

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.data.arn
  performance_insights_retention_period = 7

  auto_minor_version_upgrade = true
  backup_retention_period    = var.db_backup_retention_days
  copy_tags_to_snapshot      = true
  deletion_protection        = var.allow_destroy ? false : var.db_deletion_protection
  skip_final_snapshot        = var.db_skip_final_snapshot
  final_snapshot_identifier  = var.db_skip_final_snapshot ? null : local.db_final_snapshot_identifier
  apply_immediately          = true

  depends_on = [aws_cloudwatch_log_group.rds]
}
