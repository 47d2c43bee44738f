"""`python -m lmjax.data.preview` moved: python -m lmjax.preview."""

from lmjax import cli

if __name__ == "__main__":
  cli.moved("lmjax.data.preview", "python -m lmjax.preview (same flags)")
