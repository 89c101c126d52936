"""Behaviour scoring: the patcher that re-runs the model with a feature replaced by a simulation, and its
stage. Imports models, store, label.scoring; never llm or cli."""

# A behaviour score is resolved when its 95% CI is narrower than this: a fifth of the 0 (explains nothing)
# to 1 (explains all) range, enough to tell a label that explains half from one that explains none. Here,
# not in the patcher, so that `status` can say it without importing torch.
RESOLVED_CI_WIDTH = 0.2
