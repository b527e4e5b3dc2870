"""Checkpoint/restart runtime for Batch jobs on Spot."""
