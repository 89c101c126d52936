"""Labelling: explain, simulate, judge, score (pure metrics), nulls, few-shot, the live and batch runners,
imported labels. Imports llm, store, config, records; never torch, collect or cli."""
