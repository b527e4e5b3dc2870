"""The policy simulator and benchmark: real Spot traces, the tick model of BENCHMARK (benchmarks/RESULTS.md says how
to run it), the exact optimum, tables, plots and timelines. The policies themselves live in `spot_hpc.policy`."""
