"""Running things: the run scaffold (workdir files, checkpoints, the loop,
metric writers) and the run kinds built on it, pretraining and fine-tuning."""
