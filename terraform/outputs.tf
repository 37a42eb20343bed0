# --- the cluster -----------------------------------------------------------------------------

output "region" {
  description = "AWS region of the stack."
  value       = var.region
}

output "cluster_name" {
  description = "EKS cluster name (aws eks update-kubeconfig --name ...)."
  value       = aws_eks_cluster.this.name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_oidc_issuer_url" {
  description = "OIDC issuer of the cluster (IRSA)."
  value       = aws_eks_cluster.this.identity[0].oidc[0].issuer
}

output "node_pool_label" {
  description = "Node label key whose value (cpu or gpu) selects a node group; the GPU group is also tainted nvidia.com/gpu=true:NoSchedule."
  value       = local.node_pool_label
}

# --- images (make images) --------------------------------------------------------------------

output "ecr_registry" {
  description = "ECR registry host (docker login target)."
  value       = "${local.account_id}.dkr.ecr.${var.region}.${local.dns_suffix}"
}

output "ecr_repository_urls" {
  description = "ECR repository URLs by short name (base, trainer, serving)."
  value       = { for key, repo in aws_ecr_repository.this : key => repo.repository_url }
}

# --- storage ---------------------------------------------------------------------------------

output "data_bucket" {
  description = "Bucket for raw listings and photos."
  value       = aws_s3_bucket.this["data"].bucket
}

output "artifacts_bucket" {
  description = "Bucket for KFP artifacts, MLflow artifacts and model bundles."
  value       = aws_s3_bucket.this["artifacts"].bucket
}

output "kms_data_key_arn" {
  description = "KMS key encrypting the buckets, ECR, RDS and the logs."
  value       = aws_kms_key.data.arn
}

# --- RDS (the deploy script builds the database URLs from these) -----------------------------

output "rds_endpoint" {
  description = "RDS endpoint, host:port."
  value       = aws_db_instance.this.endpoint
}

output "rds_address" {
  description = "RDS host name."
  value       = aws_db_instance.this.address
}

output "rds_port" {
  description = "RDS port."
  value       = aws_db_instance.this.port
}

output "rds_db_name" {
  description = "Database name."
  value       = aws_db_instance.this.db_name
}

output "rds_username" {
  description = "Master user name (the password is only in the Secrets Manager secret)."
  value       = aws_db_instance.this.username
}

output "rds_master_secret_arn" {
  description = "Secrets Manager secret (JSON with username and password) managed by RDS."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

# --- IRSA roles: all by workload, and one output per role ------------------------------------

output "irsa_role_arns" {
  description = "IRSA role ARNs by workload (pipeline, model-server, mlflow, cluster-autoscaler, ebs-csi)."
  value       = { for key, role in aws_iam_role.irsa : key => role.arn }
}

output "irsa_service_accounts" {
  description = "Service accounts (namespace:name) trusted by each IRSA role."
  value       = local.irsa_service_accounts
}

output "pipeline_role_arn" {
  description = "IRSA role of the pipeline's service accounts."
  value       = aws_iam_role.irsa["pipeline"].arn
}

output "model_server_role_arn" {
  description = "IRSA role of the model server's service account."
  value       = aws_iam_role.irsa["model-server"].arn
}

output "mlflow_role_arn" {
  description = "IRSA role of the MLflow tracking server's service account."
  value       = aws_iam_role.irsa["mlflow"].arn
}

output "cluster_autoscaler_role_arn" {
  description = "IRSA role of kube-system:cluster-autoscaler."
  value       = aws_iam_role.irsa["cluster-autoscaler"].arn
}
