"""Domain package of the Spot HPC control plane, shared by every Lambda through one layer."""
