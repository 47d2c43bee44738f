"""Does pretraining pay off? Pretraining variants (which objectives, which
architecture: BERT or ModernBERT) on one corpus, each fine-tuned on one task
with several seeds, next to the same fine-tuning from random weights:

  DIR/pretrain/<variant>/                 a pretraining run per variant
  DIR/finetune/<variant>/seed_<s>/        a fine-tuning run per variant and seed
  DIR/results.json, results.md, results.png

Every run is an ordinary workdir: a finished one (its summary.json, made with
the same config) is read instead of run again, and an unfinished one resumes,
so the experiment continues where it was stopped.
"""

import dataclasses
from collections.abc import Callable

import ml_collections

from lmjax import paths
from lmjax.data import tasks
from lmjax.data.cache import learned_size
from lmjax.data.pretrain_input import tokenizer_file
from lmjax.errors import ConfigError
from experiments.transfer import results as transfer_results
from lmjax.runs import finetuning, pretraining, series
from lmjax.trainer import scaffold

@dataclasses.dataclass(frozen=True)
class Variant:
  """A variant's objectives, (mlm, nsp, cp) switched on (None: random
  weights), and its architecture."""
  objectives: tuple[bool, bool, bool] | None
  architecture: str = "bert"


VARIANTS: dict[str, Variant] = {
    "mlm": Variant((True, False, False)),
    "mlm_nsp": Variant((True, True, False)),
    "mlm_cp": Variant((True, False, True)),
    "mlm_nsp_cp": Variant((True, True, True)),
    "nsp": Variant((False, True, False)),
    "cp": Variant((False, False, True)),
    "random": Variant(None),
    # ModernBERT of the same size name, the same data and recipe otherwise:
    # MLM (it has no NSP head, nor a pooled output for CP), and random weights.
    "modernbert_mlm": Variant((True, False, False), "modernbert"),
    "modernbert_random": Variant(None, "modernbert"),
}


@dataclasses.dataclass(frozen=True)
class Plan:
  """The runs of an experiment, in order: pretraining first."""
  pretraining: dict[str, ml_collections.ConfigDict]  # variant -> config
  finetuning: dict[tuple[str, int], ml_collections.ConfigDict]  # (variant, seed) -> config


def variant_names(config) -> list[str]:
  names = [n.strip() for n in config.variants.split(",") if n.strip()]
  for name in names:
    if name not in VARIANTS:
      raise ConfigError(f"config.variants: unknown variant {name!r} (use some of "
                        f"{', '.join(VARIANTS)})")
  if not names:
    raise ConfigError("config.variants is empty; name at least one of "
                      f"{', '.join(VARIANTS)}")
  if len(set(names)) < len(names):
    raise ConfigError(f"config.variants names a variant twice: {config.variants!r}")
  return names


def _pretraining_config(config, variant: Variant):
  pre = ml_collections.ConfigDict(config.pretrain.to_dict())
  pre.data.source = config.corpus or f"task:{config.task}"
  pre.model.architecture = variant.architecture
  weights = (config.mlm_weight, config.nsp_weight, config.cp_weight)
  for field, on, weight in zip(("mlm_weight", "nsp_weight", "cp_weight"), variant.objectives,
                               weights, strict=True):
    pre.train[field] = weight if on else 0.0
  # The probe follows the task, so that a run logs how linearly separable its
  # features make the very task it is fine-tuned on.
  for field in ("text_fields", "label_field", "labels", "data_dir"):
    pre.probe[field] = config.finetune.task[field]
  pre.probe.source = config.task
  return pre


def _finetuning_config(config, variant: Variant, pretrain_dir: str | None, seed: int,
                       tokenizer: str = ""):
  fine = ml_collections.ConfigDict(config.finetune.to_dict())
  fine.seed = seed
  fine.task.source = config.task
  fine.model.architecture = variant.architecture
  if pretrain_dir:
    fine.init.source = f"pretrain:{pretrain_dir}"
  else:  # random weights: the pretraining runs' architecture and vocabulary
    fine.init.source = "random"
    fine.model.size = config.pretrain.model.size
    fine.model.max_position = config.pretrain.model.max_position
    fine.task.tokenizer = tokenizer
  return fine


def _pretraining_tokenizer(config) -> str:
  """The tokenizer file of the pretraining runs (learned from the corpus
  first if it is learn:N), '' for the built-in one."""
  section = _pretraining_config(config, VARIANTS["mlm"])
  pretraining.check_config(section)
  data = section.data
  return tokenizer_file(data) if learned_size(data.tokenizer) else data.tokenizer


# Fields of the runs' configs that the experiment sets, and what sets them.
SET_BY_EXPERIMENT = {
    "pretrain.data.source": "config.corpus",
    "pretrain.probe.source": "config.task",
    "finetune.task.source": "config.task",
    "finetune.init.source": "config.variants",
    "finetune.task.tokenizer": "the pretraining's tokenizer",
}


def _check_unset(config) -> None:
  for path, setter in SET_BY_EXPERIMENT.items():
    run, section, field = path.split(".")
    if value := config[run][section][field]:
      raise ConfigError(f"config.{path} is set by the experiment ({setter}); leave it "
                        f"empty, got {value!r}")


def plan(config, workdir: str) -> Plan:
  """The experiment's runs; ConfigError (one line) for any impossible field
  of any of them, before a run starts."""
  _check_unset(config)
  for field in ("mlm_weight", "nsp_weight", "cp_weight"):
    if config[field] <= 0:
      raise ConfigError(f"config.{field} must be positive (leave an objective out by its "
                        f"variant), got {config[field]!r}")
  if config.seeds < 1:
    raise ConfigError(f"config.seeds must be at least 1, got {config.seeds!r}")
  if not config.task:
    raise ConfigError("config.task is empty; name the task to fine-tune on (e.g. rt_polarity)")
  names = variant_names(config)
  pre = {n: _pretraining_config(config, VARIANTS[n]) for n in names
         if VARIANTS[n].objectives}
  fine = {}
  for name in names:
    pretrain_dir = (str(paths.resolve(workdir) / "pretrain" / name)
                    if VARIANTS[name].objectives else None)
    for seed in range(config.seeds):
      fine[name, seed] = _finetuning_config(config, VARIANTS[name], pretrain_dir,
                                            config.finetune.seed + seed)
  for section in pre.values():
    pretraining.check_config(section)
  for section in fine.values():
    finetuning.check_config(section)
  tasks.resolve_task(next(iter(fine.values())).task, config.finetune.task.data_dir or None)
  # The random variant takes the pretraining's vocabulary: a learned one is
  # learned here, once, after every field has been checked.
  randoms = [n for n in names if not VARIANTS[n].objectives]
  if randoms:
    tokenizer = _pretraining_tokenizer(config)
    for name in randoms:
      for seed in range(config.seeds):
        fine[name, seed] = _finetuning_config(config, VARIANTS[name], None,
                                              config.finetune.seed + seed, tokenizer)
  return Plan(pre, fine)


def run(config, workdir: str, echo: Callable[[str], None] = print) -> dict:
  """Runs (or reads) every run of the plan, then writes the results; returns
  them (also DIR/results.json), or {stopped_by, stopped_in} when a run was
  stopped (SIGTERM): running it again continues."""
  try:
    return _run_all(config, workdir, echo)
  except series.Stopped as e:
    return e.args[0]


def _run_all(config, workdir: str, echo: Callable[[str], None]) -> dict:
  runs = plan(config, workdir)
  paths.check_writable(workdir)
  total = len(runs.pretraining) + len(runs.finetuning)
  pretrained, finetuned = {}, {}
  for i, (name, section) in enumerate(runs.pretraining.items(), 1):
    summary = series.run_once(pretraining.train_and_evaluate, section,
                        str(paths.resolve(workdir) / "pretrain" / name),
                        f"[{i}/{total}] pretraining {name}", echo)
    _, nsp, cp = VARIANTS[name].objectives
    # An objective the variant did not learn is evaluated by an untrained head.
    untrained = {"eval_nsp_accuracy": not nsp, "eval_cp_accuracy": not cp}
    pretrained[name] = {k: v for k, v in summary.items() if not untrained.get(k)}
  for i, ((name, seed), section) in enumerate(runs.finetuning.items(),
                                              len(runs.pretraining) + 1):
    finetuned[name, seed] = series.run_once(
        finetuning.finetune, section,
        str(paths.resolve(workdir) / "finetune" / name / f"seed_{section.seed}"),
        f"[{i}/{total}] fine-tuning {name}, seed {section.seed}", echo)
  results = transfer_results.results(config, variant_names(config), pretrained, finetuned)
  if scaffold.is_lead():
    transfer_results.write(workdir, results)
  return results

