"""spotctl: the offline runtime, simulator and benchmarks of the Spot HPC control plane."""
