r"""Benchmark: the MFU ceiling of a training step's matmuls. Times the
forward and backward pass of only the matrix products of a BERT MLM step
(the projections, attention's two batched products, the feed-forward pair,
the MLM decoder at the masked positions), with none of the layer norms,
activations, softmax, dropout or optimizer, and prints their FLOP/s as a
fraction of the host's peak (lmjax.benchmark's: its fastest float32 2048^3
matmul). No whole step can reach a higher useful MFU than these products
alone do at the same shapes.

  python benchmarks/matmul_ceiling.py --size=base --seq_len=128 --batch=8
"""

import math
import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags

from lmjax import cli
from lmjax.errors import UserError
from lmjax.model import BertConfig, costs
from lmjax.trainer.throughput import measured_matmul_flops

_SIZE = flags.DEFINE_string("size", "base", "BERT size (tiny .. large)")
_SEQ = flags.DEFINE_integer("seq_len", 128, "sequence length")
_BATCH = flags.DEFINE_integer("batch", 8, "batch size")
_VOCAB = flags.DEFINE_integer("vocab_size", 30522, "vocabulary size")
_STEPS = flags.DEFINE_integer("steps", 8, "timed passes")


def matmul_loss(cfg: BertConfig, batch: int, length: int, predictions: int):
  """A scalar function of weights and inputs whose gradient needs exactly the
  step's matrix products, and its FLOPs (forward and backward)."""
  d, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
  tokens = batch * length

  def layer(x, w):
    q, k, v = (x @ w[name] for name in ("q", "k", "v"))
    q, k, v = (a.reshape(batch, length, n, h) for a in (q, k, v))
    scores = jnp.einsum("bqnh,bknh->bnqk", q, k)
    context = jnp.einsum("bnqk,bknh->bqnh", scores, v).reshape(tokens, d)
    y = x + context @ w["o"]
    return (y + (y @ w["wi"]) @ w["wo"]) * 1e-2, None

  def loss(weights, x):
    x, _ = jax.lax.scan(layer, x, weights["layers"])
    logits = (x[:batch * predictions] @ weights["transform"]) @ weights["embedding"].T
    return jnp.sum(logits * logits)

  # lmjax's count of the step, as the benchmark's useful MFU takes it (its
  # pooler and NSP classifier, under 0.01% of it, are not run here).
  return loss, 3 * batch * costs.forward_flops(cfg, length, predictions)


def main(argv):
  del argv
  cfg = BertConfig.named(_SIZE.value, vocab_size=_VOCAB.value)  # ConfigError: one line
  if min(_SEQ.value, _BATCH.value, _STEPS.value) < 1:
    raise UserError("--seq_len, --batch and --steps must be at least 1")
  predictions = math.ceil(0.15 * _SEQ.value)
  loss, flops = matmul_loss(cfg, _BATCH.value, _SEQ.value, predictions)
  d, f, count = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
  keys = iter(jax.random.split(jax.random.key(0), 10))

  def normal(*shape):
    return jax.random.normal(next(keys), shape) * 0.02

  weights = dict(layers=dict(q=normal(count, d, d), k=normal(count, d, d),
                             v=normal(count, d, d), o=normal(count, d, d),
                             wi=normal(count, d, f), wo=normal(count, f, d)),
                 transform=normal(d, d), embedding=normal(cfg.vocab_size, d))
  x = normal(_BATCH.value * _SEQ.value, d)
  grad = jax.jit(jax.grad(loss))
  jax.block_until_ready(grad(weights, x))
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    jax.block_until_ready(grad(weights, x))
    times.append(time.perf_counter() - start)
  peak = measured_matmul_flops()
  median = statistics.median(times)
  print(f"{_SIZE.value} L{_SEQ.value} B{_BATCH.value}: the step's matmuls alone, forward and "
        f"backward: {median * 1e3:.0f} ms (min {min(times) * 1e3:.0f}), {flops / 1e9:.0f} GFLOP, "
        f"{flops / median / 1e9:.0f} GFLOP/s = {flops / median / peak:.1%} of the host's peak "
        f"({peak / 1e9:.0f} GFLOP/s, its fastest 2048^3 matmul)")


if __name__ == "__main__":
  cli.run(main)
