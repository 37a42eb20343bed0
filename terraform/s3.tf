# Two buckets, both private (public access block, bucket-owner-enforced ownership), versioned,
# SSE-KMS with the data key (S3 Bucket Keys on, which cuts the KMS request charges), with a
# bucket policy that refuses any request not made over TLS 1.2+:
#   data      - raw listings exports and photos (the pipeline's S3 source), and under cache/
#               the pipeline's shard and photo-feature caches (config/eks.yaml);
#   artifacts - KFP pipeline root, MLflow artifacts, the served model bundles.
# Names carry the account id and region, as bucket names are global.

locals {
  buckets = {
    data      = "${local.name}-data-${local.account_id}-${var.region}"
    artifacts = "${local.name}-artifacts-${local.account_id}-${var.region}"
  }
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Server access logging needs a third bucket (itself unlogged); use CloudTrail S3 data events in a production account.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; the data is re-creatable from the source systems and the buckets are versioned.
  #checkov:skip=CKV2_AWS_62:No consumer of S3 event notifications (the pipeline is scheduled, not event-driven).
  for_each = local.buckets

  bucket        = each.value
  force_destroy = var.allow_destroy
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = local.buckets

  bucket                  = aws_s3_bucket.this[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.data.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    id     = "expire-noncurrent-and-abort-incomplete-uploads"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

# Deny every request over plain HTTP, and every request over TLS older than 1.2.
locals {
  bucket_deny_conditions = {
    DenyInsecureTransport = { test = "Bool", variable = "aws:SecureTransport", values = ["false"] }
    DenyOutdatedTLS       = { test = "NumericLessThan", variable = "s3:TlsVersion", values = ["1.2"] }
  }
}

data "aws_iam_policy_document" "bucket_tls_only" {
  for_each = local.buckets

  dynamic "statement" {
    for_each = local.bucket_deny_conditions

    content {
      sid       = statement.key
      effect    = "Deny"
      actions   = ["s3:*"]
      resources = [aws_s3_bucket.this[each.key].arn, "${aws_s3_bucket.this[each.key].arn}/*"]

      principals {
        type        = "*"
        identifiers = ["*"]
      }

      condition {
        test     = statement.value.test
        variable = statement.value.variable
        values   = statement.value.values
      }
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id
  policy = data.aws_iam_policy_document.bucket_tls_only[each.key].json

  # A bucket policy written while the public access block is still being applied can race it.
  depends_on = [aws_s3_bucket_public_access_block.this]
}
