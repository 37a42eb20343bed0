# --- general ---------------------------------------------------------------------------------

variable "region" {
  description = "AWS region for every resource."
  type        = string
  default     = "eu-west-2"
}

variable "name" {
  description = "Name prefix of every resource (cluster name, bucket and repository prefix)."
  type        = string
  default     = "marketsearch"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}$", var.name))
    error_message = "name must be 2-23 characters of lower-case letters, digits and '-', starting with a letter (it prefixes S3 bucket and RDS names)."
  }
}

variable "tags" {
  description = "Extra tags added to every resource (on top of Project, ManagedBy and Stack)."
  type        = map(string)
  default     = {}
}

variable "allow_destroy" {
  description = "Teardown switch: lets `terraform destroy` delete non-empty S3 buckets and ECR repositories and an RDS instance with deletion protection. `make destroy-cluster` sets it (apply, then destroy); leave it false otherwise."
  type        = bool
  default     = false
}

# --- network ---------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR of the VPC. Public subnets get /24s at its start, private subnets /20s (pods take VPC addresses with the VPC CNI)."
  type        = string
  default     = "10.40.0.0/16"
}

variable "availability_zones" {
  description = "Availability zones, one public and one private subnet in each. Empty: <region>a and <region>b."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.availability_zones) == 0 || (length(var.availability_zones) >= 2 && length(var.availability_zones) <= 3)
    error_message = "Give 2 or 3 availability zones (EKS needs subnets in at least two)."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all private subnets (cheaper, about $35/month each) instead of one per AZ (survives the loss of an AZ)."
  type        = bool
  default     = true
}

# --- EKS -------------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "EKS Kubernetes version (keep it in standard support: extended support costs 6x the control-plane fee)."
  type        = string
  default     = "1.35"
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach the public Kubernetes API endpoint. Empty: the endpoint is private only (reachable from the VPC, a VPN or a bastion). `make deploy-cluster` passes the operator's /32 unless told otherwise."
  type        = list(string)
  default     = []

  validation {
    condition     = !contains(var.cluster_endpoint_public_access_cidrs, "0.0.0.0/0")
    error_message = "Refusing 0.0.0.0/0 for the public API endpoint: list the operator or CI CIDRs."
  }

  validation {
    condition     = alltrue([for c in var.cluster_endpoint_public_access_cidrs : can(cidrnetmask(c))])
    error_message = "Each public API endpoint entry must be an IPv4 CIDR such as 203.0.113.7/32."
  }
}

variable "cluster_log_types" {
  description = "EKS control-plane log types sent to CloudWatch Logs."
  type        = list(string)
  default     = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups (EKS control plane, RDS)."
  type        = number
  default     = 365
}

variable "cluster_admin_principal_arns" {
  description = "IAM principals (roles/users, e.g. a CI role or an SSO admin role) given cluster-admin through EKS access entries, in addition to whoever creates the cluster."
  type        = list(string)
  default     = []
}

variable "enable_ebs_csi_driver" {
  description = "Install the aws-ebs-csi-driver EKS add-on (with its IRSA role). KFP's MySQL and MinIO and MLflow need persistent volumes."
  type        = bool
  default     = true
}

# --- node groups -----------------------------------------------------------------------------

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (system pods, KFP, MLflow, KServe, data stages)."
  type        = list(string)
  default     = ["m6i.large"]
}

variable "cpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the CPU node group."
  type        = string
  default     = "ON_DEMAND"
}

variable "cpu_min_size" {
  description = "Minimum size of the CPU node group."
  type        = number
  default     = 1
}

variable "cpu_desired_size" {
  description = "Initial size of the CPU node group (the cluster-autoscaler owns it afterwards)."
  type        = number
  default     = 2
}

variable "cpu_max_size" {
  description = "Maximum size of the CPU node group."
  type        = number
  default     = 4
}

variable "cpu_disk_size" {
  description = "Root volume of CPU nodes, GiB."
  type        = number
  default     = 50
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (training stages). g4dn.xlarge: 1 NVIDIA T4, 4 vCPU, 16 GiB."
  type        = list(string)
  default     = ["g4dn.xlarge"]
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the GPU node group (SPOT is about 60-70% cheaper; training steps must then tolerate interruption)."
  type        = string
  default     = "ON_DEMAND"
}

variable "gpu_min_size" {
  description = "Minimum size of the GPU node group: 0 so GPU nodes exist only while a training step needs one."
  type        = number
  default     = 0
}

variable "gpu_max_size" {
  description = "Maximum size of the GPU node group."
  type        = number
  default     = 2
}

variable "gpus_per_node" {
  description = "GPUs per node of the GPU instance type, advertised to the cluster-autoscaler for scale-from-zero."
  type        = number
  default     = 1
}

variable "gpu_disk_size" {
  description = "Root volume of GPU nodes, GiB (CUDA/TensorFlow images are large)."
  type        = number
  default     = 100
}

variable "tag_node_group_asgs" {
  description = "Tag the node groups' Auto Scaling groups with the cluster-autoscaler node-template tags (labels, taint, GPU count) it needs to scale a group up from zero."
  type        = bool
  default     = true
}

# --- IRSA ------------------------------------------------------------------------------------

variable "pipeline_service_accounts" {
  description = "\"namespace:name\" of the Kubernetes service accounts that may assume the pipeline role. Standalone KFP runs every pipeline pod in the kubeflow namespace as kubeflow:pipeline-runner; marketsearch:pipeline-runner is for jobs in the app namespace."
  type        = list(string)
  default     = ["kubeflow:pipeline-runner", "marketsearch:pipeline-runner"]
}

variable "model_server_service_accounts" {
  description = "\"namespace:name\" of the service accounts that may assume the model-server role (the KServe InferenceService's serviceAccountName; its storage-initializer downloads the model with it)."
  type        = list(string)
  default     = ["marketsearch:model-server"]
}

variable "mlflow_service_accounts" {
  description = "\"namespace:name\" of the service accounts that may assume the MLflow tracking server role (artifact store in the artifacts bucket)."
  type        = list(string)
  default     = ["marketsearch:mlflow"]
}

# --- storage ---------------------------------------------------------------------------------

variable "noncurrent_version_expiration_days" {
  description = "Days after which noncurrent object versions in the buckets are deleted."
  type        = number
  default     = 90
}

variable "ecr_repositories" {
  description = "ECR repositories, created as <name>/<repository>."
  type        = list(string)
  default     = ["base", "trainer", "serving"]
}

# --- RDS -------------------------------------------------------------------------------------

variable "postgres_version" {
  description = "RDS PostgreSQL major version (the parameter group family follows it)."
  type        = string
  default     = "17"
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.small"
}

variable "db_allocated_storage" {
  description = "Initial RDS storage, GiB."
  type        = number
  default     = 20
}

variable "db_max_allocated_storage" {
  description = "Storage autoscaling ceiling, GiB."
  type        = number
  default     = 100
}

variable "db_name" {
  description = "Database created on the instance (the pipeline's listings and MLflow's tables)."
  type        = string
  default     = "marketsearch"
}

variable "db_username" {
  description = "Master user name; its password is generated and kept in Secrets Manager by RDS."
  type        = string
  default     = "marketsearch"
}

variable "db_multi_az" {
  description = "Multi-AZ RDS (doubles its cost)."
  type        = bool
  default     = false
}

variable "db_backup_retention_days" {
  description = "Automated backup retention, days."
  type        = number
  default     = 7
}

variable "db_deletion_protection" {
  description = "RDS deletion protection (lifted only while allow_destroy is true)."
  type        = bool
  default     = true
}

variable "db_skip_final_snapshot" {
  description = "Delete the RDS instance without a final snapshot."
  type        = bool
  default     = false
}

variable "db_final_snapshot_identifier" {
  description = "Name of the final snapshot taken when the instance is destroyed (default <name>-postgres-final; `make destroy-cluster` adds a timestamp)."
  type        = string
  default     = null
}
