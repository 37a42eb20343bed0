terraform {
  # 1.5+ for check blocks / import blocks should they be needed; tested with 1.11.
  required_version = ">= 1.5.0"

  required_providers {
    # The only provider: everything is written as plain aws_* resources (no registry modules).
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }

  # State is local by default (terraform/terraform.tfstate, never committed). For a shared
  # environment add a backend.tf with an S3 backend (bucket + DynamoDB/`use_lockfile` locking)
  # and run `terraform init -backend-config=...`; see README.md.
}

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}
