"""Collection: corpus reading, the streaming collector and its exact statistics, shard state, local and Ray
shards, and the collect / merge stage. Imports models, store, config; never label, llm, analysis or cli."""
