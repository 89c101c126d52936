"""The stages, one module each, each with a plain Python entry point that the CLI, the benchmarks and the
tests call: `collect.collect_stage`, `label.label_stage`, `behaviour.behaviour_stage`, and
`run.run_stage` / `run.control_stage` which chain them. Each reads its inputs from the store, works
outside any transaction, and writes new rows; none changes what an earlier stage wrote."""
