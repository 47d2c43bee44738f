"""Packed rows: several examples one after another in a row, so that a batch
spends its compute on tokens rather than padding (lmjax.model.rows says
what the model reads of them).

A packed batch holds, for R rows of length L and at most E examples a row:
  input_ids, segment_ids, input_mask [R, L]   the examples' tokens, then padding
  positions [R, L]       each token's position in its example (0 at its [CLS])
  example_index [R, L]   the example it belongs to (its index in the batch, or
                         in its micro-batch), -1 on padding
  example_starts [R, E]  where each example of the row begins (0 in empty slots)
  example_mask [R, E]    1 for an example, 0 for an empty slot
and every per-example field (labels, weights) as [R, E].

Which example goes to which row is best-fit decreasing: exact to compute,
deterministic, and within a row or two of the fewest rows. Numpy only.
"""

import dataclasses

import numpy as np

from lmjax.errors import UserError

# The sequence fields of an encoded example, which packing lays end to end.
SEQUENCE_FIELDS = ("input_ids", "segment_ids", "input_mask")
# An example's MLM targets [P]: a packed row holds those of its examples.
PREDICTION_FIELDS = ("masked_positions", "masked_ids", "masked_weights")
# Row counts a batch may take: multiples of 1/16 of its examples. Each count
# compiles the step once more: a fine-tuning run of a few epochs meets most of
# 16 early; a long pretraining run affords 32 (denser rows).
ROW_STEPS = 16


def max_examples_per_row(row_length: int) -> int:
  """E, the slots of a row: room for examples of 8 tokens on average (a
  row holding fewer, longer examples leaves slots empty; more short ones
  than E start another row)."""
  return max(1, row_length // 8)


def best_fit(lengths: np.ndarray, row_length: int, max_per_row: int,
             costs: np.ndarray | None = None, budget: int = 0) -> list[list[int]]:
  """The examples of each row: the longest first, each into the row with
  the least room that holds its tokens, has a free slot and (with `costs`)
  has `budget` left for its cost: its MLM predictions (best-fit
  decreasing). Rows keep their examples in index order. O(N * L)."""
  if len(lengths) and int(lengths.max()) > row_length:
    raise UserError(f"an example of {int(lengths.max())} tokens does not fit a packed "
                    f"row of {row_length}")
  rows: list[list[int]] = []
  spent: list[int] = []
  with_room: list[list[int]] = [[] for _ in range(row_length + 1)]  # rows by free tokens
  for i in np.argsort(-lengths, kind="stable").tolist():
    n, cost = int(lengths[i]), 0 if costs is None else int(costs[i])
    found = next(((f, k) for f in range(n, row_length + 1)
                  for k, r in enumerate(with_room[f])
                  if costs is None or spent[r] + cost <= budget), None)
    if found is None:
      r, free = len(rows), row_length
      rows.append([])
      spent.append(0)
    else:
      free, k = found
      r = with_room[free].pop(k)
    rows[r].append(i)
    spent[r] += cost
    if len(rows[r]) < max_per_row:
      with_room[free - n].append(r)
  return [sorted(r) for r in rows]


def row_sizes(examples: int, multiple: int = 1, steps: int = ROW_STEPS) -> tuple[int, ...]:
  """The row counts a batch of `examples` may be packed into: multiples of
  `steps`-ths of it, each rounded up to `multiple`; the last holds one
  example a row."""
  step = max(1, -(-examples // steps))
  sizes = {-(-min(examples, k * step) // multiple) * multiple
           for k in range(1, steps + 1)}
  return tuple(sorted(sizes | {-(-examples // multiple) * multiple}))


def place(lengths: np.ndarray, row_length: int, *, groups: int = 1, row_multiple: int = 1,
          max_per_row: int | None = None, costs: np.ndarray | None = None,
          budget: int = 0, steps: int = ROW_STEPS) -> list[list[int]]:
  """The examples (indices into `lengths`) of each row of a packed batch.

  With `groups` = k, example i goes to group i % k, and group g's rows are
  rows g, g + k, g + 2k, ...: the micro-batches of an accumulated step
  (lmjax.train.steps) hold the examples they hold unpacked. Each group
  takes the same number of rows, the smallest of `row_sizes` (in multiples
  of `row_multiple`, the devices a batch is split over) that holds every
  group's examples (`steps` sizes); spare rows are empty. With `costs`, a
  row's examples cost at most `budget` (see `best_fit`).
  """
  n = len(lengths)
  if n % groups:
    raise ValueError(f"{n} examples do not split into {groups} groups")
  max_per_row = max_per_row or max_examples_per_row(row_length)
  members = [np.arange(g, n, groups) for g in range(groups)]
  placed = [[m[r].tolist() for r in best_fit(lengths[m], row_length, max_per_row,
                                             None if costs is None else costs[m], budget)]
            for m in members]
  needed = max(len(p) for p in placed)
  rows = next(s for s in row_sizes(n // groups, row_multiple, steps) if s >= needed)
  return [placed[g][r] if r < len(placed[g]) else []
          for r in range(rows) for g in range(groups)]


def place_window(lengths: np.ndarray, row_length: int, window: int, *, groups: int = 1,
                 row_multiple: int = 1, max_per_row: int | None = None,
                 costs: np.ndarray | None = None, budget: int = 0,
                 steps: int = ROW_STEPS) -> list[list[list[int]]]:
  """The rows of each of `window` steps whose examples (`lengths`, the
  window's, `window` times a step's) are packed together: denser rows than
  a step's examples alone fill, as a step takes whichever examples its rows
  hold. Row r of the window (best-fit decreasing) goes to step r % window,
  and a step's rows to its micro-batches in turn (`groups`, as `place`
  lays them out), each group's rows a size of `row_sizes` for a step's
  share of examples."""
  n = len(lengths)
  if n % window or (n // window) % groups:
    raise ValueError(f"{n} examples do not split into {window} steps of {groups} groups")
  max_per_row = max_per_row or max_examples_per_row(row_length)
  rows = best_fit(lengths, row_length, max_per_row, costs, budget)
  sizes = row_sizes(n // window // groups, row_multiple, steps)
  out = []
  for step in range(window):
    mine = rows[step::window]
    per_group = [mine[g::groups] for g in range(groups)]
    count = next(s for s in sizes if s >= max(len(p) for p in per_group))
    out.append([per_group[g][r] if r < len(per_group[g]) else []
                for r in range(count) for g in range(groups)])
  return out


def pack(arrays: dict[str, np.ndarray], row_length: int, *, groups: int = 1,
         row_multiple: int = 1, max_per_row: int | None = None,
         predictions: int | None = None) -> dict[str, np.ndarray]:
  """Packs a batch of N encoded examples into rows of `row_length`, placed
  by `place`: `SEQUENCE_FIELDS` [N, L0] end to end, `PREDICTION_FIELDS`
  [N, P] (MLM targets) as `predictions` slots a row, any other field [N, ...]
  one slot an example. `example_index` is an example's index in its group."""
  max_per_row = max_per_row or max_examples_per_row(row_length)
  lengths = arrays["input_mask"].sum(1).astype(np.int64)
  rows = place(lengths, row_length, groups=groups, row_multiple=row_multiple,
               max_per_row=max_per_row)
  return fill(arrays, rows, row_length, max_per_row, groups, predictions)


def fill(arrays: dict[str, np.ndarray], rows: list[list[int]], row_length: int,
         max_per_row: int, groups: int = 1, predictions: int | None = None
         ) -> dict[str, np.ndarray]:
  """Packed rows of the examples `rows` names (indices into `arrays`, whose
  `example_index` is i // groups); see `pack`."""
  lengths = arrays["input_mask"].sum(1).astype(np.int64)
  count = len(rows)
  out = {k: np.zeros((count, row_length), arrays[k].dtype) for k in SEQUENCE_FIELDS}
  out["positions"] = np.zeros((count, row_length), np.int32)
  out["example_index"] = np.full((count, row_length), -1, np.int32)
  out["example_starts"] = np.zeros((count, max_per_row), np.int32)
  out["example_mask"] = np.zeros((count, max_per_row), np.int32)
  for k, v in arrays.items():
    if k in PREDICTION_FIELDS:
      out[k] = np.zeros((count, predictions), v.dtype)
    elif k not in SEQUENCE_FIELDS:
      out[k] = np.zeros((count, max_per_row, *v.shape[1:]), v.dtype)
  # One entry a placed example, in row order: its row, slot, index and start.
  row_s = np.array([r for r, examples in enumerate(rows) for _ in examples], np.int64)
  slot_s = np.array([j for examples in rows for j in range(len(examples))], np.int64)
  example_s = np.array([i for examples in rows for i in examples], np.int64)
  if not len(example_s):
    return out
  n_s = lengths[example_s]
  ends = np.cumsum(n_s)
  row_first = np.r_[0, np.flatnonzero(np.diff(row_s)) + 1]  # each row's first entry
  start_s = ends - n_s - np.repeat(np.r_[0, ends[row_first[1:] - 1]], np.diff(np.r_[
      row_first, len(row_s)]))
  # One entry a token: where it goes and where it comes from.
  token_s = np.repeat(np.arange(len(example_s)), n_s)
  position_t = np.arange(len(token_s)) - np.repeat(ends - n_s, n_s)
  row_t, column_t = row_s[token_s], start_s[token_s] + position_t
  for k in SEQUENCE_FIELDS:
    out[k][row_t, column_t] = arrays[k][example_s[token_s], position_t]
  out["positions"][row_t, column_t] = position_t
  out["example_index"][row_t, column_t] = example_s[token_s] // groups
  out["example_starts"][row_s, slot_s] = start_s
  out["example_mask"][row_s, slot_s] = 1
  for k, v in arrays.items():
    if k not in SEQUENCE_FIELDS and k not in PREDICTION_FIELDS:
      out[k][row_s, slot_s] = v[example_s]
  if "masked_weights" in arrays:  # a row's examples' real predictions, in order
    entry_p, column_p = np.nonzero(arrays["masked_weights"][example_s] > 0)
    counts = np.bincount(entry_p, minlength=len(example_s))
    before = np.cumsum(counts) - counts  # predictions of the entries before, in all rows
    row_before = before - np.repeat(before[row_first], np.diff(np.r_[row_first, len(row_s)]))
    slot_p = row_before[entry_p] + np.arange(len(entry_p)) - before[entry_p]
    if len(slot_p) and slot_p.max() >= predictions:
      raise ValueError(f"a row needs more than its {predictions} prediction slots")
    ex_p, row_p = example_s[entry_p], row_s[entry_p]
    out["masked_positions"][row_p, slot_p] = (arrays["masked_positions"][ex_p, column_p]
                                              + start_s[entry_p])
    out["masked_ids"][row_p, slot_p] = arrays["masked_ids"][ex_p, column_p]
    out["masked_weights"][row_p, slot_p] = arrays["masked_weights"][ex_p, column_p]
  return out


@dataclasses.dataclass(frozen=True)
class Packing:
  """How a task's batches are packed: rows of `row_length`, the step's
  `groups` (micro-batches), and the `row_multiple` (devices the batch is
  split over) a row count must be. Picklable, for grain."""
  row_length: int
  groups: int = 1
  row_multiple: int = 1

  def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return pack(arrays, self.row_length, groups=self.groups, row_multiple=self.row_multiple)


def pack_all(arrays: dict[str, np.ndarray], row_length: int, rows_per_batch: int
             ) -> list[dict[str, np.ndarray]]:
  """Every example once, packed into as few rows as they fit, cut into
  batches of `rows_per_batch` rows (the last filled with empty rows):
  evaluation's batches, where which examples share a batch does not
  matter. `example_index` is each token's example's index in `arrays`."""
  lengths = arrays["input_mask"].sum(1).astype(np.int64)
  max_per_row = max_examples_per_row(row_length)
  placed = best_fit(lengths, row_length, max_per_row)
  rows = -(-max(len(placed), 1) // rows_per_batch) * rows_per_batch
  out = fill(arrays, placed + [[]] * (rows - len(placed)), row_length, max_per_row)
  return [{k: v[start:start + rows_per_batch] for k, v in out.items()}
          for start in range(0, rows, rows_per_batch)]


def slot_examples(batch: dict[str, np.ndarray]) -> np.ndarray:
  """[R, E]: the example each slot of packed rows holds (its
  `example_index`), -1 for an empty slot."""
  index = np.take_along_axis(batch["example_index"], batch["example_starts"], 1)
  return np.where(batch["example_mask"] > 0, index, -1)


def real_token_fraction(batch: dict[str, np.ndarray]) -> float:
  """The share of a batch's token slots that hold real tokens."""
  return float(batch["input_mask"].mean()) if batch["input_mask"].size else 0.0
