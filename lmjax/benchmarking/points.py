"""What the benchmark measures: the points of a sweep (the product of lists
of sizes, lengths, batches, dtypes, ...), the settings they share, their
synthetic batch and FLOPs, checked before anything compiles.

Figures per point: compile time, step time (median and min over the timed
steps), tokens/s, model and useful MFU, the compiled step's memory and the
device's peak where the platform reports it, and the host's peak RSS.

A point's sequences are all `seq_len` long (`lengths=full`) or drawn from a
realistic distribution (`rt_polarity`: the built-in task's examples as the
built-in tokenizer encodes them, 37 tokens on average; `long_tailed`: a
Wikipedia-like tail, log-normal around seq_len / 4, clipped at seq_len),
one a row padded to seq_len or, with `packing`, packed into rows of seq_len
(lmjax.data.packing). tokens/s counts real tokens; a peer pads each batch to
its longest sequence, as transformers' dynamic padding does.
"""

import dataclasses
import functools
import gzip
import importlib.util
import itertools
import math
import resource
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lmjax import config_sections
from lmjax.data import builtin, packing
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import UserError
from lmjax.model import architectures
from lmjax.model import config as model_config

# Pretraining is BERT's MLM + NSP, ModernBERT's MLM alone.
OBJECTIVES = {"bert": ("mlm_nsp", "classification"), "modernbert": ("mlm", "classification")}
PRETRAINING = {"bert": "mlm_nsp", "modernbert": "mlm"}  # --objective=pretraining
# The longest sequence of each: BERT's position table, ModernBERT's context.
MAX_LENGTH = {"bert": 512, "modernbert": 8192}
LENGTHS = ("full", "rt_polarity", "long_tailed")
MODES = ("train", "forward_backward")  # the whole step, or no optimizer
PEERS = ("hf_torch",)

# The configs' optimizer (AdamW, clipping, BERT's b1, b2 and eps) at the
# learning rate of BERT's base recipe, with a schedule long enough to time.
TRAIN = types.SimpleNamespace(**config_sections.optimizer(learning_rate=1e-4),
                              warmup_steps=10, steps=10_000)
_MODEL = config_sections.model()  # what a point does not set is the configs' default


@dataclasses.dataclass(frozen=True)
class Point:
  """One configuration of a sweep."""
  size: str  # the architecture's named size: BERT's tiny .. large, ModernBERT's tiny .. large
  seq_len: int
  batch: int  # global batch
  dtype: str = _MODEL.dtype  # computation dtype; parameters stay float32
  attention_impl: str = _MODEL.attention_impl
  remat_policy: str = _MODEL.remat_policy
  scan_layers: bool = _MODEL.scan_layers
  mesh: str = "auto"  # DATAxFSDPxTENSOR, or auto: every device on data
  objective: str = "mlm_nsp"  # mlm_nsp or mlm (pretraining) | classification (fine-tuning)
  lengths: str = "full"  # the sequences' lengths: one of LENGTHS
  packing: bool = False  # several sequences a row (else one a row, padded)
  architecture: str = "bert"  # bert | modernbert

  @property
  def model(self) -> str:
    """The size, after the architecture where it is not BERT's."""
    return self.size if self.architecture == "bert" else f"{self.architecture}-{self.size}"

  def label(self) -> str:
    shape = "" if self.lengths == "full" and not self.packing else (
        f" lengths={self.lengths}{' packed' if self.packing else ''}")
    return (f"{self.model} L{self.seq_len} B{self.batch} {self.dtype} {self.attention_impl}"
            f" remat={self.remat_policy} scan={int(self.scan_layers)} mesh={self.mesh}"
            f" {self.objective}{shape}")


SWEEP_FIELDS = tuple(f.name for f in dataclasses.fields(Point))


def point_of(row: dict) -> Point:
  """The point of a results row (one written before a field existed has
  its default)."""
  return Point(**{f.name: row[f.name] for f in dataclasses.fields(Point) if f.name in row})


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every point of a sweep shares."""
  mode: str = "train"
  steps: int = 10  # timed steps a round
  rounds: int = 2  # rounds of timed steps (taking turns with a peer)
  warmup: int = 2  # untimed steps after compilation
  vocab_size: int = 30522
  mask_rate: float = 0.15  # MLM predictions a sequence: ceil(mask_rate * seq_len)
  dropout: float = 0.1  # hidden and attention dropout (attention 0 with cudnn)
  cpu_peak_tflops: float = 0.0  # the host's peak for MFU on CPU; 0 = measured (a matmul)
  peer: str = ""  # '' or one of PEERS


def describe(settings: Settings) -> str:
  """What every point shares, as the line a sweep starts with. The
  vocabulary moves small models' figures most: the MLM decoder and the
  embedding gradients grow with it."""
  vocabulary = (f"vocabulary {settings.vocab_size:,}"
                + (" (BERT's; the CPU configs' tokenizers have 8,000 pieces: "
                   "--vocab_size=8000 times their step)" if settings.vocab_size == 30522 else ""))
  return (f"{vocabulary}, MLM positions {settings.mask_rate:.0%} of a sequence, dropout "
          f"{settings.dropout}, mode {settings.mode}, {settings.rounds} x {settings.steps} "
          "timed steps a point")


def predictions(settings: Settings, seq_len: int) -> int:
  return max(1, math.ceil(settings.mask_rate * seq_len))


def parse_mesh(text: str, device_count: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) of 'DATAxFSDPxTENSOR' or 'auto'; UserError when
  it does not cover the devices."""
  if text == "auto":
    return device_count, 1, 1
  parts = text.split("x")
  if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
    raise UserError(f"--mesh={text}: expected DATAxFSDPxTENSOR (e.g. 2x2x2) or auto")
  sizes = tuple(int(p) for p in parts)
  if math.prod(sizes) != device_count:
    raise UserError(f"--mesh={text}: {math.prod(sizes)} devices, but there are "
                    f"{device_count}")
  return sizes


def sweep(values: dict[str, Sequence[Any]]) -> list[Point]:
  """Every combination of the lists in `values` (a list per Point field)."""
  names = [n for n in SWEEP_FIELDS if n in values]
  return [Point(**dict(zip(names, combo, strict=True)))
          for combo in itertools.product(*(values[n] for n in names))]


def check(points: Sequence[Point], settings: Settings, device_count: int,
          platform: str) -> None:
  """UserError naming the first impossible value of the sweep or settings,
  before anything compiles."""
  if not points:
    raise UserError("the sweep is empty")
  shown = {**dataclasses.asdict(settings), "compare": settings.peer}  # flag names
  for name, ok, need in (
      ("mode", settings.mode in MODES, f"one of {', '.join(MODES)}"),
      ("steps", settings.steps >= 1, "at least 1"),
      ("rounds", settings.rounds >= 1, "at least 1"),
      ("warmup", settings.warmup >= 0, "non-negative"),
      ("vocab_size", settings.vocab_size >= 8, "at least 8"),
      ("mask_rate", 0 < settings.mask_rate <= 1, "in (0, 1]"),
      ("dropout", 0 <= settings.dropout < 1, "in [0, 1)"),
      ("cpu_peak_tflops", settings.cpu_peak_tflops >= 0, "non-negative"),
      ("compare", settings.peer in ("", *PEERS), f"one of {', '.join(PEERS)}"),
      ("compare", not settings.peer or platform == "cpu",
       f"for CPU runs (the peer runs on the host; this is {platform})")):
    if not ok:
      raise UserError(f"--{name}={shown[name]!r}: must be {need}")
  missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
  if settings.peer and missing:
    raise UserError(f"--compare={settings.peer} needs {' and '.join(missing)} installed "
                    "(pip install -r requirements-test.txt)")
  for p in points:
    if p.architecture not in architectures.NAMES:
      raise UserError(f"--architecture={p.architecture}: must be one of "
                      f"{', '.join(architectures.NAMES)}")
    sizes, objectives = architectures.sizes(p.architecture), OBJECTIVES[p.architecture]
    longest = MAX_LENGTH[p.architecture]
    for name, ok, need in (
        ("size", p.size in sizes, f"one of {', '.join(sizes)} for {p.architecture}"),
        ("seq_len", 2 <= p.seq_len <= longest, f"in [2, {longest}] for {p.architecture}"),
        ("batch", p.batch >= 1, "at least 1"),
        ("dtype", p.dtype in ("float32", "bfloat16", "float16"),
         "float32, bfloat16 or float16"),
        ("attention_impl", p.attention_impl in model_config.ATTENTION_IMPLS,
         f"one of {', '.join(model_config.ATTENTION_IMPLS)}"),
        ("attention_impl", p.attention_impl != "cudnn" or platform == "gpu",
         f"xla on {platform} (cudnn is for NVIDIA GPUs)"),
        ("remat_policy", p.remat_policy in model_config.REMAT_POLICIES,
         f"one of {', '.join(model_config.REMAT_POLICIES)}"),
        ("objective", p.objective in objectives,
         f"one of {', '.join(objectives)} for {p.architecture}"),
        ("lengths", p.lengths in LENGTHS, f"one of {', '.join(LENGTHS)}")):
      if not ok:
        raise UserError(f"--{name}={getattr(p, name)}: must be {need}")
    data, fsdp, _ = parse_mesh(p.mesh, device_count)
    if p.batch % (data * fsdp):
      raise UserError(f"--batch={p.batch}: must be divisible by the mesh's data x fsdp "
                      f"({data * fsdp} with --mesh={p.mesh})")


def sequence_lengths(point: Point, seed: int = 0) -> np.ndarray:
  """[batch]: the tokens of each of the point's sequences, [CLS] and [SEP]
  included (see the module's docstring)."""
  rng = np.random.default_rng(seed)
  b, length = point.batch, point.seq_len
  shortest = min(8, length)
  if point.lengths == "rt_polarity":
    drawn = rng.choice(_rt_polarity_lengths(), b)
  elif point.lengths == "long_tailed":
    drawn = np.round(rng.lognormal(np.log(length / 4), 1.0, b))
  else:
    drawn = np.full(b, length)
  return np.clip(drawn, shortest, length).astype(np.int64)


@functools.cache
def _rt_polarity_lengths() -> np.ndarray:
  with gzip.open(builtin.RT_POLARITY_FILE, "rt", encoding="utf-8") as f:
    texts = [line.rstrip("\n").split("\t", 1)[-1] for line in f]
  return np.array([len(ids) + 2 for ids in Tokenizer.load(builtin.TOKENIZER_FILE).encode(texts)])


def synthetic_batch(point: Point, settings: Settings, seed: int = 0,
                    row_multiple: int = 1) -> dict[str, np.ndarray]:
  """A batch shaped as the trainer's: sequence pairs of `sequence_lengths`
  (the first half segment A) with ceil(mask_rate * length) MLM positions
  each, or classification pairs with labels; one a row padded to seq_len,
  or with `point.packing` packed into rows of seq_len, a multiple of
  `row_multiple` of them."""
  rng = np.random.default_rng(seed)
  b, length = point.batch, point.seq_len
  lengths = sequence_lengths(point, seed)
  real = np.arange(length) < lengths[:, None]
  batch = dict(
      input_ids=np.where(real, rng.integers(5, settings.vocab_size, (b, length)), 0),
      segment_ids=real & (np.arange(length) >= lengths[:, None] // 2),
      input_mask=real)
  batch = {k: v.astype(np.int32) for k, v in batch.items()}
  costs, slots = None, None
  if point.objective == "classification":
    batch["labels"] = rng.integers(0, 2, b).astype(np.int32)
  else:
    p = predictions(settings, length)
    costs = np.minimum([max(1, math.ceil(settings.mask_rate * n)) for n in lengths], lengths - 1)
    positions = np.zeros((b, p), np.int32)
    for i, (n, k) in enumerate(zip(lengths, costs, strict=True)):
      positions[i, :k] = np.sort(rng.choice(np.arange(1, n), k, replace=False))
    batch.update(masked_positions=positions,
                 masked_ids=np.take_along_axis(batch["input_ids"], positions, 1),
                 masked_weights=(np.arange(p) < costs[:, None]).astype(np.float32),
                 nsp_labels=rng.integers(0, 2, b).astype(np.int32))
    slots = max(p, math.ceil(settings.mask_rate * length)) + 2
  if not point.packing:
    return batch
  per_row = packing.max_examples_per_row(length)
  rows = packing.place(lengths, length, row_multiple=row_multiple, max_per_row=per_row,
                       costs=costs, budget=slots or 0)
  return packing.fill(batch, rows, length, per_row, predictions=slots)


def batch_figures(batch: dict[str, np.ndarray]) -> dict:
  """The rows a batch takes, its token slots and the real tokens among them."""
  rows, length = batch["input_mask"].shape
  real = int(batch["input_mask"].sum())
  return dict(rows=rows, token_slots=rows * length, real_tokens=real,
              real_token_fraction=round(real / (rows * length), 4))


def padded_to_longest(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """An unpacked batch cut to its longest sequence (dynamic padding)."""
  longest = int(batch["input_mask"].sum(1).max())
  return {k: v[:, :longest] if k in ("input_ids", "segment_ids", "input_mask") else v
          for k, v in batch.items()}


def model_config_of(point: Point, settings: Settings) -> architectures.ModelConfig:
  """The point's model config: its architecture and size, dtype and layout,
  the settings' vocabulary and dropout (attention dropout 0 with cudnn)."""
  attention_dropout = 0.0 if point.attention_impl == "cudnn" else settings.dropout
  section = dict(architecture=point.architecture, size=point.size, dtype=point.dtype,
                 attention_impl=point.attention_impl, remat_policy=point.remat_policy,
                 scan_layers=point.scan_layers, dropout_rate=settings.dropout,
                 attention_dropout_rate=attention_dropout,
                 max_position=max(point.seq_len, 512))
  return architectures.from_section(section, vocab_size=settings.vocab_size)


def flops_per_token(point: Point, settings: Settings) -> tuple[float, float]:
  """(model, useful) training FLOPs per token: the model's counts the MLM
  decoder at every position, as BERT's reference implementation computes
  it; the useful count only at the masked ones (what lmjax computes)."""
  from lmjax.model import costs  # pylint: disable=import-outside-toplevel
  cfg = model_config_of(point, settings)
  if point.objective == "classification":
    flops = costs.flops_per_token(cfg, point.seq_len, 0)
    return flops, flops
  return (costs.flops_per_token(cfg, point.seq_len, point.seq_len),
          costs.flops_per_token(cfg, point.seq_len, predictions(settings, point.seq_len)))


def timed_steps(step: Callable[[], None], count: int) -> list[float]:
  """Seconds of each of `count` calls of `step` (which waits for its work)."""
  times = []
  for _ in range(count):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
