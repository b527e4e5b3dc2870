"""The checkpoint drill: example workloads run as real processes against loopback stand-ins of S3 and EC2 metadata."""
