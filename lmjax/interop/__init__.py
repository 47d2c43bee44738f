"""Exchange of weights with other BERT implementations."""
