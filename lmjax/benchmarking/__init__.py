"""The accelerator benchmark (python -m lmjax.benchmark): the trainer's own
jitted step, timed over a sweep. points: what is measured; sweep: each point
in processes of its own; lmjax_step and hf_torch: the workers a point's
process runs; results: the lines, jsonl, csv and plot a sweep leaves."""
