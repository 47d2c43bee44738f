"""The kinds of run: pretraining, fine-tuning (with prediction), the linear
probe, export, and where an encoder starts (init sources). Each builds on
the trainer (lmjax.trainer) and shares what it shares through a module the
others import (scoring, init_sources), never through a sibling kind."""
