"""Does pretraining pay off? The transfer experiment: pretraining variants
on one corpus, each fine-tuned on one task with several seeds, next to
random weights (README.md beside this file has its results)."""
