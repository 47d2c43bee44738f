"""Tokens per second and model FLOPs utilisation (MFU) of a running loop."""

import dataclasses
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip, from the vendors' datasheets.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12, "NVIDIA B200": 2250e12,
}


def peak_flops_per_device(cpu_peak_tflops: float) -> float | None:
  """Peak FLOP/s of one local device: a known accelerator's, or on CPU the
  configured figure for the whole host shared among its devices."""
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    return cpu_peak_tflops * 1e12 / jax.local_device_count() if cpu_peak_tflops else None
  for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if device.device_kind.startswith(name):
      return flops
  return None


def measured_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of the fastest of `repeats` float32 [size, size] matmuls on the
  first device: what the host reaches on the work BERT is made of, a peak
  that needs no datasheet."""
  x = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


@dataclasses.dataclass(frozen=True)
class Throughput:
  """What turns a batch into tokens, and tokens per second into MFU."""
  flops_per_token: float
  peak_flops_per_device: float | None
  token_field: str = "input_ids"  # a batch's tokens: this array's size, padding included


class RateWindow:
  """Tokens/s and MFU over the steps since the last reading. The first
  reading only opens the window, so compilation stays out of every rate."""

  def __init__(self, throughput: Throughput, clock=time.perf_counter):
    self._throughput, self._clock = throughput, clock
    self._start: float | None = None

  def tokens(self, batch: dict) -> int:
    """The token positions of a (global) batch."""
    return batch[self._throughput.token_field].size

  def read(self, tokens: float) -> dict:
    """{tokens_per_s, mfu} of the `tokens` that the steps since the previous
    reading took in ({} for the first): real tokens where the steps count
    them (lmjax.train.steps.real_tokens), so MFU is the useful work's."""
    now, previous = self._clock(), self._start
    self._start = now
    if previous is None:
      return {}
    t = self._throughput
    rate = tokens / max(now - previous, 1e-9)
    peak = t.peak_flops_per_device
    mfu = rate * t.flops_per_token / (peak * jax.device_count()) if peak else None
    return dict(tokens_per_s=round(rate, 1), mfu=None if mfu is None else round(mfu, 5))
