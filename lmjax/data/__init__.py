"""Host-side input: numpy in, numpy out. Nothing here imports jax."""
