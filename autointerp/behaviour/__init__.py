"""Behaviour scoring: the patcher that re-runs the model with a feature replaced by a simulation, and its
stage. Imports models, store, label.scoring; never llm or cli."""
