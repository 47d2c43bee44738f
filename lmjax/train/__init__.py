"""Training, pure: the generic step, the optimizer, and the objectives
(MLM + NSP pretraining, classification) as functions of (params, batch)."""
