r"""Benchmark: one BertForPreTraining forward + backward on this machine's devices.

Prints one JSON line per configuration: step time, tokens per second, model
TFLOP/s (from `flops_per_token`, so MFU is this over the chip's peak) and,
with --compare_attention, the largest difference between cuDNN and XLA
attention outputs. No optimizer: this times the model alone.

  python benchmarks/forward_backward.py --size=base --seq_len=128 --batch=64 \
      --dtype=bfloat16 --attention_impl=xla,cudnn
"""

import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from lmjax import parallel
from lmjax.model import BertConfig, BertForPreTraining, flops_per_token
from lmjax.train import mlm_nsp

_SIZE = flags.DEFINE_string("size", "base", "named BERT size")
_SEQ = flags.DEFINE_integer("seq_len", 128, "sequence length")
_BATCH = flags.DEFINE_integer("batch", 64, "global batch size")
_PREDS = flags.DEFINE_integer("predictions", 20, "masked positions per sequence")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "computation dtype")
_IMPLS = flags.DEFINE_list("attention_impl", ["xla"], "attention implementations")
_SCAN = flags.DEFINE_bool("scan_layers", True, "nn.scan over layers")
_REMAT = flags.DEFINE_string("remat_policy", "none", "remat policy")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps (after 2 warm-up steps)")
_COMPARE = flags.DEFINE_bool("compare_attention", False,
                             "also report max |cudnn - xla| of the outputs")


def _batch(cfg, batch, length, preds):
  rng = np.random.default_rng(0)
  lengths = rng.integers(length // 2, length + 1, batch)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return dict(
      input_ids=rng.integers(0, cfg.vocab_size, (batch, length)).astype(np.int32),
      segment_ids=(np.arange(length)[None] >= lengths[:, None] // 2).astype(np.int32) * mask,
      input_mask=mask,
      masked_positions=rng.integers(0, length // 2, (batch, preds)).astype(np.int32),
      masked_ids=rng.integers(5, cfg.vocab_size, (batch, preds)).astype(np.int32),
      masked_weights=np.ones((batch, preds), np.float32),
      nsp_labels=rng.integers(0, 2, batch).astype(np.int32))


def _loss(model, params, batch, rng):
  out = model.apply({"params": params}, input_ids=batch["input_ids"],
                    segment_ids=batch["segment_ids"], input_mask=batch["input_mask"],
                    masked_positions=batch["masked_positions"], deterministic=False,
                    rngs={"dropout": rng})
  parts = mlm_nsp.losses(out, batch)
  return parts["mlm_loss"] + parts["nsp_loss"]


def run(impl: str) -> dict:
  cfg = BertConfig.named(_SIZE.value, dtype=_DTYPE.value, attention_impl=impl,
                         scan_layers=_SCAN.value, remat_policy=_REMAT.value,
                         attention_dropout_rate=0.0)
  model = BertForPreTraining(cfg)
  mesh = parallel.make_mesh()
  host_batch = _batch(cfg, _BATCH.value, _SEQ.value, _PREDS.value)
  inputs = {k: host_batch[k] for k in ("input_ids", "segment_ids", "input_mask",
                                        "masked_positions")}
  variables, _ = parallel.sharded_init(
      lambda k: model.init(k, **inputs), mesh, jax.random.key(0))
  batch = parallel.shard_batch(host_batch, mesh)
  with parallel.sharding_context(mesh):
    step = jax.jit(jax.value_and_grad(lambda p, b, r: _loss(model, p, b, r)))
    start = time.perf_counter()
    loss, grads = step(variables["params"], batch, jax.random.key(1))
    jax.block_until_ready(grads)
    compile_s = time.perf_counter() - start
    step(variables["params"], batch, jax.random.key(1))[1]
    start = time.perf_counter()
    for i in range(_STEPS.value):
      loss, grads = step(variables["params"], batch, jax.random.key(i))
    jax.block_until_ready(grads)
    seconds = (time.perf_counter() - start) / _STEPS.value
    outputs = jax.jit(model.apply)(variables, **{k: batch[k] for k in inputs})
  tokens = _BATCH.value * _SEQ.value
  result = dict(
      device=jax.devices()[0].device_kind, devices=jax.device_count(),
      size=_SIZE.value, seq_len=_SEQ.value, batch=_BATCH.value,
      dtype=_DTYPE.value, attention_impl=impl, scan_layers=_SCAN.value,
      remat_policy=_REMAT.value, compile_s=round(compile_s, 2),
      step_ms=round(1e3 * seconds, 3), tokens_per_s=round(tokens / seconds),
      model_tflops_per_s=round(
          flops_per_token(cfg, _SEQ.value, _PREDS.value) * tokens / seconds / 1e12, 2),
      loss=float(loss))
  return result, outputs


def main(argv):
  del argv
  outputs = {}
  for impl in _IMPLS.value:
    result, outputs[impl] = run(impl)
    print(json.dumps(result), flush=True)
  if _COMPARE.value and {"xla", "cudnn"} <= set(outputs):
    diff = {k: float(jnp.abs(outputs["cudnn"][k].astype(jnp.float32)
                             - outputs["xla"][k].astype(jnp.float32)).max())
            for k in outputs["xla"]}
    print(json.dumps({"max_abs_cudnn_minus_xla": diff}), flush=True)


if __name__ == "__main__":
  app.run(main)
