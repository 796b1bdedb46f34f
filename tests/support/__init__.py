"""The harness shared by the tests and the benchmarks: processes, the pipeline, chaos drills, the
simulator and PostgreSQL starters."""
