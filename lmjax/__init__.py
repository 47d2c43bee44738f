"""lmjax: BERT-style encoders in JAX, from pretraining to fine-tuning."""

__version__ = "0.1.0"
