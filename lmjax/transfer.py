"""`python -m lmjax.transfer` moved to experiments/transfer (see its main.py)."""

from lmjax import cli

if __name__ == "__main__":
  cli.moved("lmjax.transfer", "python -m experiments.transfer.main "
            "--config=experiments/transfer/config.py (from the checkout's root)")
