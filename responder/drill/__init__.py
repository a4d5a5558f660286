"""Practice and measurement: drills on the embedded lab or an existing cluster, scenarios, benchmarks."""
