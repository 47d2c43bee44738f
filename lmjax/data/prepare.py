"""`python -m lmjax.data.prepare` moved: python -m lmjax.prepare."""

from lmjax import cli

if __name__ == "__main__":
  cli.moved("lmjax.data.prepare", "python -m lmjax.prepare (same flags)")
