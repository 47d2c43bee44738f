"""Benchmarks the training step lmjax's trainer runs, over a sweep:

  python -m lmjax.benchmark --size=small,base --batch=8,32 --output=runs/bench

Each list flag is one axis of the sweep; every combination is a point, run in
a process of its own. `--lengths=rt_polarity,long_tailed --packing=false,true`
times padded against packed rows on realistic lengths (tokens/s counts real
tokens). A line per point as it goes; results.jsonl,
results.csv and results.png in --output. --compare=hf_torch also times
transformers' torch BERT on the same workload (CPU), taking turns with lmjax.
"""

import dataclasses
import signal
import sys

import jax
from absl import flags

from lmjax import cli
from lmjax.errors import UserError
from lmjax.benchmarking import points as sweep_points
from lmjax.benchmarking import results, sweep

_ARCHITECTURE = flags.DEFINE_list("architecture", ["bert"], "architectures: bert, modernbert")
_SIZE = flags.DEFINE_list("size", ["small"], "named sizes (BERT's tiny, mini, small, medium, "
                          "base, large; ModernBERT's tiny, base, large)")
_SEQ_LEN = flags.DEFINE_list("seq_len", ["128"], "sequence lengths")
_BATCH = flags.DEFINE_list("batch", ["32"], "global batch sizes")
_DEFAULT = sweep_points.Point("tiny", 128, 32)  # the configs' model settings
_DTYPE = flags.DEFINE_list("dtype", [_DEFAULT.dtype], "computation dtypes (float32, bfloat16)")
_ATTENTION = flags.DEFINE_list("attention_impl", [_DEFAULT.attention_impl],
                               "attention: xla, cudnn (GPU)")
_REMAT = flags.DEFINE_list("remat_policy", [_DEFAULT.remat_policy],
                           "remat: none, full, dots, dots_no_batch")
_SCAN = flags.DEFINE_list("scan_layers", [str(_DEFAULT.scan_layers).lower()],
                          "nn.scan over layers: true, false")
_MESH = flags.DEFINE_list("mesh", ["auto"], "DATAxFSDPxTENSOR meshes, or auto (all on data)")
_OBJECTIVE = flags.DEFINE_list("objective", ["pretraining"],
                               "pretraining (BERT's mlm_nsp, ModernBERT's mlm), mlm_nsp, mlm, "
                               "classification")
_LENGTHS = flags.DEFINE_list("lengths", ["full"], "sequence lengths: full (seq_len), "
                             "rt_polarity (its examples'), long_tailed (Wikipedia-like)")
_PACKING = flags.DEFINE_list("packing", ["false"], "pack sequences into rows: true, false")
_MODE = flags.DEFINE_string("mode", "train", "train (forward, backward, AdamW) or "
                            "forward_backward (no optimizer)")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps a round")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "rounds of timed steps (turns with --compare)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps after compilation")
_VOCAB = flags.DEFINE_integer("vocab_size", 30522, "vocabulary size (BERT's; the CPU "
                              "configs' tokenizers have 8,000)")
_MASK_RATE = flags.DEFINE_float("mask_rate", 0.15, "MLM positions: ceil(rate * seq_len)")
_DROPOUT = flags.DEFINE_float("dropout", 0.1, "hidden and attention dropout")
_PEAK = flags.DEFINE_float("cpu_peak_tflops", 0.0, "the host's peak TFLOP/s, for MFU on "
                           "CPU; 0 = measured: the fastest float32 2048^3 matmul")
_COMPARE = flags.DEFINE_string("compare", "", "a peer to time alongside: hf_torch (CPU)")
_OUTPUT = flags.DEFINE_string("output", "runs/benchmark", "directory for the results")


def _values(flag, kind):
  parsed = []
  for text in flag.value:
    text = text.strip()
    try:
      if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
          raise ValueError(text)
        parsed.append(text.lower() in ("true", "1"))
      else:
        parsed.append(kind(text))
    except ValueError:
      what = "a boolean" if kind is bool else "an integer"
      raise UserError(f"--{flag.name}: {text!r} is not {what}") from None
  if not parsed:
    raise UserError(f"--{flag.name} is empty")
  return parsed


def main(argv):
  del argv
  points = sweep_points.sweep(dict(
      size=_values(_SIZE, str), seq_len=_values(_SEQ_LEN, int), batch=_values(_BATCH, int),
      dtype=_values(_DTYPE, str), attention_impl=_values(_ATTENTION, str),
      remat_policy=_values(_REMAT, str), scan_layers=_values(_SCAN, bool),
      mesh=_values(_MESH, str), objective=_values(_OBJECTIVE, str),
      lengths=_values(_LENGTHS, str), packing=_values(_PACKING, bool),
      architecture=_values(_ARCHITECTURE, str)))
  points = [dataclasses.replace(p, objective=sweep_points.PRETRAINING.get(p.architecture, "?"))
            if p.objective == "pretraining" else p for p in points]
  settings = sweep_points.Settings(
      mode=_MODE.value, steps=_STEPS.value, rounds=_ROUNDS.value, warmup=_WARMUP.value,
      vocab_size=_VOCAB.value, mask_rate=_MASK_RATE.value, dropout=_DROPOUT.value,
      cpu_peak_tflops=_PEAK.value, peer=_COMPARE.value)
  sweep_points.check(points, settings, jax.device_count(), jax.devices()[0].platform)
  output = results.prepare_output(_OUTPUT.value)
  print(sweep_points.describe(settings), flush=True)
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, sweep.interrupt)
  try:
    rows = sweep.run(points, settings, output, echo=lambda text: print(text, flush=True))
  except KeyboardInterrupt:
    print(f"interrupted: the points measured so far are in {output}", file=sys.stderr,
          flush=True)
    sys.exit(130)
  failed = sum("error" in r for r in rows)
  print(f"{len(points)} points, {failed} failed; results in {output}", flush=True)


if __name__ == "__main__":
  cli.run(main)
