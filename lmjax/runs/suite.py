"""The task suite `lmjax.suite` runs: each start (a pretraining run, a
Hugging Face encoder, random weights) fine-tuned on each task with several
seeds under one protocol, the way papers score a pretraining run (Cramming's
GLUE protocol: one set of hyper-parameters, a few epochs, the median over
seeds):

  DIR/<task>/<start>/seed_<s>/     a fine-tuning run
  DIR/results.json, results.md, results.png

Tasks run in the order that finishes soonest (the fewest training tokens
first), and the results are written after each task. Every run is an
ordinary workdir: a finished one is read, an unfinished one resumes, so a
stopped suite continues where it was.
"""

import dataclasses
import json
from collections.abc import Callable
from pathlib import PurePath

import ml_collections

from lmjax import paths
from lmjax.data import task_files, tasks
from lmjax.data.tokenization import FILE_NAMES
from lmjax.errors import ConfigError, UserError
from lmjax.runs import finetuning, init_sources, series, suite_results
from lmjax.trainer import scaffold


@dataclasses.dataclass(frozen=True)
class Plan:
  """The suite's fine-tuning runs, in the order they run."""
  tasks: dict[str, str]  # name -> source, soonest first
  starts: dict[str, str]  # name -> init source
  runs: dict[tuple[str, str, int], ml_collections.ConfigDict]  # (task, start, seed) -> config


def _names(value: str, field: str) -> list[str]:
  items = [v.strip() for v in value.split(",") if v.strip()]
  if not items:
    raise ConfigError(f"config.{field} is empty; name at least one")
  return items


def task_name(source: str) -> str:
  """A task's name in the suite's tables and folders: rt_polarity,
  glue_sst2, or a local file's name without its extension."""
  local = task_files.parse_source(source)
  if local is None:
    return source.replace("/", "_")
  return PurePath(local[1].replace("{split}", "")).stem.strip("_.-") or "task"


def start_name(source: str) -> str:
  """A start's name: random, or the directory's name (pretrain_DIRNAME,
  hf_DIRNAME)."""
  kind, path = init_sources.parse_source(source)
  return kind if path is None else f"{kind}_{path.name}"


def _unique(names: dict[str, str], field: str) -> None:
  seen: dict[str, str] = {}
  for source, name in names.items():
    if name in seen:
      what = "twice" if seen[name] == source else f"as {seen[name]!r} and {source!r}"
      raise ConfigError(f"config.{field} names {name!r} {what}; a suite runs each once "
                        "(local files need distinct names)")
    seen[name] = source


def _start_fields(source: str) -> dict:
  """The model fields a start brings: a pretraining run's architecture, size
  and tokenizer (random weights of the same take them); UserError when it is
  not there."""
  kind, path = init_sources.parse_source(source)
  if kind != "pretrain":
    return {}
  try:
    saved = json.loads((path / "config.json").read_text())
    model = saved["model"]
  except (OSError, ValueError, KeyError, TypeError):
    raise UserError(f"config.starts: {source} is not a pretraining workdir (no readable "
                    "config.json with a model section)") from None
  tokenizer = next((str(path / n) for n in FILE_NAMES if (path / n).is_file()), "")
  return dict(architecture=model.get("architecture", "bert"), size=model["size"],
              max_position=model["max_position"], tokenizer=tokenizer)


def _run_config(config, source: str, start: str, seed: int,
                like: dict) -> ml_collections.ConfigDict:
  fine = ml_collections.ConfigDict(config.finetune.to_dict())
  fine.seed, fine.task.source, fine.init.source = seed, source, start
  fields = _start_fields(start) if start != "random" else like
  if "architecture" in fields:
    fine.model.architecture = fields["architecture"]
  if start == "random" and fields:
    fine.model.size, fine.model.max_position = fields["size"], fields["max_position"]
    fine.task.tokenizer = fine.task.tokenizer or fields["tokenizer"]
  return fine


def _training_tokens(task: tasks.Task, data_dir: str | None) -> int:
  """A task's cost, roughly: the characters of its training texts."""
  return sum(len(t) for texts in tasks.load_split(task, "train", data_dir).texts for t in texts)


def plan(config, echo: Callable[[str], None] = print) -> Plan:
  """The suite's runs; ConfigError or UserError (one line) for an unknown
  or duplicate task or start, a bad seed count or any impossible field of
  any run, before a run starts."""
  for section, setter in (("task", "tasks"), ("init", "starts")):
    if config.finetune[section].source:
      raise ConfigError(f"config.finetune.{section}.source is set by the suite (config."
                        f"{setter}); leave it empty, got {config.finetune[section].source!r}")
  if config.seeds < 1:
    raise ConfigError(f"config.seeds must be at least 1, got {config.seeds!r}")
  sources = _names(config.tasks, "tasks")
  starts = _names(config.starts, "starts")
  task_names = {s: task_name(s) for s in sources}
  start_names = {s: start_name(s) for s in starts}
  for field, items in (("tasks", sources), ("starts", starts)):
    twice = next((item for item in items if items.count(item) > 1), None)
    if twice:
      raise ConfigError(f"config.{field} names {twice!r} twice; a suite runs each once")
  _unique(task_names, "tasks")
  _unique(start_names, "starts")
  like = next((_start_fields(s) for s in starts if s.startswith("pretrain:")), {})
  for start in starts:
    _start_fields(start)
  data_dir = config.finetune.task.data_dir or None
  resolved = {}
  for source in sources:
    section = ml_collections.ConfigDict({**config.finetune.task.to_dict(), "source": source})
    resolved[source] = tasks.resolve_task(section, data_dir, section="config.tasks")
  for source in sources:  # every field checked before any task's data is read
    finetuning.check_config(_run_config(config, source, starts[0], config.finetune.seed, like))
  echo(f"the suite: {len(sources)} tasks x {len(starts)} starts x {config.seeds} seeds; "
       "sizing the tasks")
  cost = {s: _training_tokens(resolved[s], data_dir) for s in sources}
  order = sorted(sources, key=lambda s: (cost[s], sources.index(s)))
  runs = {}
  for source in order:
    for start in starts:
      for k in range(config.seeds):
        seed = config.finetune.seed + k
        runs[task_names[source], start_names[start], seed] = _run_config(
            config, source, start, seed, like)
  return Plan({task_names[s]: s for s in order}, {start_names[s]: s for s in starts}, runs)


def run(config, workdir: str, echo: Callable[[str], None] = print) -> dict:
  """Runs (or reads) every run of the suite, writing the results after each
  task; returns them, or {stopped_by, stopped_in} when a run was stopped
  (SIGTERM): running it again continues."""
  suite = plan(config, echo)
  paths.check_writable(workdir)
  root = paths.resolve(workdir)
  done: dict[tuple[str, str, int], dict] = {}
  results = {}
  try:
    for i, ((task, start, seed), section) in enumerate(suite.runs.items(), 1):
      done[task, start, seed] = series.run_once(
          finetuning.finetune, section, str(root / task / start / f"seed_{seed}"),
          f"[{i}/{len(suite.runs)}] {task}, {start}, seed {seed}", echo)
      if all((task, s, seed) in done for s in suite.starts for seed in _seeds(config)):
        results = suite_results.results(config, suite, done)
        if scaffold.is_lead():
          suite_results.write(root, results)
  except series.Stopped as e:
    return e.args[0]
  return results


def _seeds(config) -> list[int]:
  return [config.finetune.seed + k for k in range(config.seeds)]

