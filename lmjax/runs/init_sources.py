"""Where a fine-tuned encoder starts, `config.init.source`:

  pretrain:DIR   the newest checkpoint of an lmjax pretraining workdir
  hf:DIR         a Hugging Face BERT or ModernBERT directory (config.json and weights)
  random         random weights of config.model.architecture and .size

each with the tokenizer that belongs to it. Only the parameters are read
from a pretraining checkpoint, never its optimizer moments.
"""

import dataclasses
import json

import jax
import ml_collections
import numpy as np
from etils import epath

from lmjax import paths
from lmjax.data import builtin
from lmjax.data.tokenization import FILE_NAMES, Tokenizer
from lmjax.errors import CheckpointError, ConfigError, UserError, first_line
from lmjax.interop import hf
from lmjax.interop.hf import HeadsError, load_hf_bert
from lmjax.interop.hf_modernbert import load_hf_modernbert
from lmjax.model import architectures
from lmjax.model.architectures import ModelConfig, runtime_fields
from lmjax.model.encoder import stack_layers, unstack_layers
from lmjax.train import classification, mlm_nsp, steps
from lmjax.trainer.checkpoints import Checkpoints

KINDS = ("pretrain", "hf", "random")


@dataclasses.dataclass
class Start:
  """Where the encoder starts: its config, its weights (the parts a
  classifier shares with it, {'bert': ...} or {'model': ..., 'head': ...};
  None for random), its tokenizer and a description for the logs."""
  config: ModelConfig
  params: dict | None
  tokenizer: Tokenizer
  origin: str


def parse_source(source: str) -> tuple[str, epath.Path | None]:
  """(kind, directory) of `config.init.source`; ConfigError when it is none
  of pretrain:DIR, hf:DIR or random."""
  kind, sep, path = source.partition(":")
  if source == "random":
    return "random", None
  if sep and kind in ("pretrain", "hf") and path:
    return kind, paths.resolve(path)
  raise ConfigError(f"config.init.source must be pretrain:DIR, hf:DIR or random, "
                    f"got {source!r}")


def load_start(config, mesh, num_labels: int) -> Start:
  """The encoder config, weights and tokenizer `config.init.source` names;
  a Hugging Face classifier of `num_labels` outputs brings its classifier."""
  kind, path = parse_source(config.init.source)
  if kind == "random":
    tokenizer = Tokenizer.load(config.task.tokenizer or builtin.TOKENIZER_FILE)
    return Start(architectures.from_section(config.model, vocab_size=tokenizer.vocab_size),
                 None, tokenizer, "random weights")
  if kind == "hf":
    architecture = hf_architecture(path, config)
    if architecture == "modernbert":
      model_cfg, params = load_hf_modernbert(path, num_labels,
                                             **runtime_fields(architecture, config.model))
      params.pop("output_bias", None)  # a masked LM's decoder: no classifier reads it
    else:
      model_cfg, params = load_hf_bert(path, heads=False, num_labels=num_labels,
                                       **runtime_fields(architecture, config.model))
    name = "ModernBERT" if architecture == "modernbert" else "BERT"
    start = Start(model_cfg, params, _tokenizer(path, config.task.tokenizer, config),
                  f"Hugging Face {name} {path}" + (" with its classifier"
                                                   if "classifier" in params else ""))
  else:
    start = _pretraining_run(path, config, mesh)
  check_vocabulary(start.tokenizer, start.config, start.origin)
  return start


def hf_architecture(path: epath.Path, config) -> str:
  """The architecture of a Hugging Face directory (its model_type), which
  must be the one config.model.architecture names."""
  try:
    model_type = hf.model_type(path)
  except CheckpointError as e:
    raise UserError(f"config.init.source={config.init.source}: {e}") from None
  if model_type not in architectures.NAMES:
    raise UserError(f"config.init.source={config.init.source}: model_type {model_type!r}; "
                    f"lmjax reads {' and '.join(architectures.NAMES)} directories")
  wanted = config.model.get("architecture", "bert")
  if model_type != wanted:
    raise ConfigError(f"config.init.source={config.init.source} is a {model_type} model, "
                      f"but config.model.architecture={wanted}; set "
                      f"--config.model.architecture={model_type}")
  return model_type


def check_vocabulary(tokenizer: Tokenizer, model_cfg: ModelConfig, origin: str) -> None:
  """UserError when the tokenizer does not fit the checkpoint's embedding table."""
  if tokenizer.vocab_size != model_cfg.vocab_size:
    raise UserError(f"{origin}: its tokenizer has {tokenizer.vocab_size} pieces but the "
                    f"model's vocabulary has {model_cfg.vocab_size} rows; the tokenizer does "
                    "not belong to this checkpoint")


def _tokenizer(directory: epath.Path, configured: str, config,
               field: str = "config.task.tokenizer") -> Tokenizer:
  """The tokenizer that travels with a checkpoint directory; a different
  one `configured` (in `field`) is an error."""
  if any((directory / name).is_file() for name in FILE_NAMES):
    tokenizer = Tokenizer.load(directory)
    if configured and Tokenizer.load(configured).fingerprint != tokenizer.fingerprint:
      raise UserError(f"{field} ({configured}) is not the tokenizer of "
                      f"config.init.source={config.init.source} ({directory}); leave "
                      f"{field} empty")
    return tokenizer
  if configured:
    return Tokenizer.load(configured)
  raise UserError(f"{directory}: no tokenizer ({', '.join(FILE_NAMES)}); name the "
                  f"checkpoint's tokenizer with --{field}=FILE")


def _pretraining_run(path: epath.Path, config, mesh) -> Start:
  field = f"config.init.source={config.init.source}"
  if not (path / "config.json").is_file():
    raise UserError(f"{field}: not a pretraining workdir (no config.json); run "
                    f"python -m lmjax.pretrain --config=configs/pretrain.py --workdir={path} "
                    "first, or set --config.init.source=hf:DIR or random")
  saved = ml_collections.ConfigDict(json.loads((path / "config.json").read_text()))
  if "data" not in saved or "model" not in saved:
    raise UserError(f"{field}: not a pretraining workdir (its config.json has no data "
                    "section: a fine-tuning run's?)")
  tokenizer = _tokenizer(path, config.task.tokenizer, config)
  pretrained_cfg = pretraining_model(path, saved, tokenizer)
  architectures.check_same(pretrained_cfg, config.model, f"pretraining run {path}")
  step, params = pretrained_params(path, field, pretrained_cfg, saved.data, mesh)
  shared = {k: params[k] for k in architectures.encoder_parts(pretrained_cfg)}
  model_cfg = architectures.with_runtime(pretrained_cfg, config.model)
  if model_cfg.scan_layers != pretrained_cfg.scan_layers:
    relayout = stack_layers if model_cfg.scan_layers else unstack_layers
    name = architectures.encoder_name(model_cfg)
    shared[name] = {**shared[name], "encoder": relayout(shared[name]["encoder"])}
  return Start(model_cfg, shared, tokenizer, f"pretraining run {path} (step {step})")


def pretraining_model(path: epath.Path, saved, tokenizer: Tokenizer) -> ModelConfig:
  """The model config of a pretraining workdir: its model.json, or (a
  workdir written before there was one) its config's model section."""
  if (path / "model.json").is_file():
    return architectures.from_dict(json.loads((path / "model.json").read_text()))
  return architectures.from_section(saved.model, vocab_size=tokenizer.vocab_size)


def pretrained_params(path: epath.Path, field: str, model_cfg: ModelConfig, data,
                      mesh) -> tuple[int, dict]:
  """(step, parameters: BERT's {'bert', 'mlm', 'nsp'}) of a pretraining workdir's
  newest checkpoint that can be restored (a damaged one is reported and
  passed over, not moved: the workdir is another run's); only the
  parameters are read, never the optimizer's."""
  if not (path / "checkpoints").is_dir():
    raise UserError(f"{field}: no checkpoints yet")
  length, predictions = data.max_seq_length, data.max_predictions_per_seq
  example = dict(input_ids=np.zeros((1, length), np.int32),
                 segment_ids=np.zeros((1, length), np.int32),
                 input_mask=np.ones((1, length), np.int32),
                 masked_positions=np.zeros((1, predictions), np.int32))
  abstract = {"params": steps.abstract_params(
      mlm_nsp.init_params(architectures.pretraining_model(model_cfg), example), mesh)}
  ckpts = Checkpoints(path / "checkpoints")
  try:
    found = sorted(ckpts.all_steps(), reverse=True)
    if not found:
      raise UserError(f"{field}: no checkpoints yet")
    for step in found:
      try:
        return step, ckpts.restore_part(step, abstract)["params"]
      except Exception as e:  # pylint: disable=broad-exception-caught  # damaged
        print(f"{field}: the checkpoint of step {step} cannot be restored ({first_line(e)}); "
              "trying the one before", flush=True)
  finally:
    ckpts.close()
  raise CheckpointError(f"{field}: no checkpoint can be restored")


def load_hf_pretraining(path, config) -> tuple[ModelConfig, dict, Tokenizer]:
  """(model config, weights, tokenizer) of a Hugging Face directory for
  pretraining: BERT's {'bert', 'mlm', 'nsp'} from a BertForPreTraining, or
  {'bert'} alone (the heads then start random) from any other BERT;
  ModernBERT's encoder, with its head and decoder bias where it has them.
  The runtime fields of config.model apply, and config.data.tokenizer may
  only name the directory's own tokenizer."""
  architecture = hf_architecture(path, config)
  tokenizer = _tokenizer(path, config.data.tokenizer, config, "config.data.tokenizer")
  runtime = runtime_fields(architecture, config.model)
  if architecture == "modernbert":
    model_cfg, params = load_hf_modernbert(path, **runtime)
    params.pop("classifier", None)
  else:
    try:
      model_cfg, params = load_hf_bert(path, heads=True, **runtime)
    except HeadsError:
      model_cfg, params = load_hf_bert(path, heads=False, **runtime)
  check_vocabulary(tokenizer, model_cfg, f"Hugging Face {architecture} {path}")
  return model_cfg, params, tokenizer


def best_params(workdir: epath.Path, model, example: dict, mesh):
  """(step, parameters) of DIR/best, in the shardings `mesh` gives them."""
  abstract = steps.abstract_params(classification.init_params(model, example), mesh)
  best = Checkpoints(workdir / "best", keep=1, json_items=("metrics",))
  try:
    step = best.latest_step()
    if step is None:
      raise UserError(f"{workdir}: no best checkpoint yet")
    return step, best.restore_part(step, {"params": abstract})["params"]
  finally:
    best.close()


def with_params(state, shardings, params: dict):
  """`state` with the weights of `params` (any of {'bert', 'mlm', 'nsp'}), in
  the state's shardings and dtypes; the parts `params` lacks (a classifier,
  heads) keep their initial weights."""
  replaced = {}
  for name, part in params.items():
    target = state.params[name]
    if (jax.tree.structure(target) != jax.tree.structure(part) or
        any(a.shape != b.shape for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(part),
                                               strict=False))):
      raise CheckpointError(f"the checkpoint's {name} weights do not fit the model its "
                            "config describes")
    replaced[name] = jax.tree.map(lambda x, t, s: jax.device_put(x, s).astype(t.dtype),
                                  part, target, shardings.params[name])
  return state.replace(params={**state.params, **replaced})
