"""Labelling: explain, simulators (simulators: one interface; simulate: prompts and readers), judges (detect),
scoring (pure metrics), nulls, few-shot, units of work (units), the live runner (stage), the batch runner
(batch, batch_results, batch_files, batchio), imported labels. Imports llm, store, config, records; never
torch, collect or cli."""
