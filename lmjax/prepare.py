"""Prepares pretraining data once, on Apache Beam: documents -> tokenized NSP
pairs in ArrayRecord shards + metadata.json, which every host then streams.

  python -m lmjax.prepare --source=text:corpus/*.txt --output=DIR \\
      [--tokenizer=corpus.model --max_seq_length=128 --num_shards=64]

Locally it runs on Beam's DirectRunner, one worker per core. Any other
flag is a Beam pipeline option, e.g. --runner=DataflowRunner --project=P
--region=R --temp_location=gs://BUCKET/tmp with --output=gs://BUCKET/DIR.
Train with --config.data.source=prepared:DIR.
"""

import json
import logging
import os
import shutil
import time

from absl import flags
from absl import logging as absl_logging

from lmjax import cli, console
from lmjax.data import builtin, shards, sources
from lmjax.data.shard_writing import Settings, metadata, split_entry, staging_directory
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import UserError, first_line

_SOURCE = flags.DEFINE_string("source", None, "austen | tfds:NAME[/CONFIG] | "
                              "text:PATH_OR_GLOB (local or gs://), joined by +")
_OUTPUT = flags.DEFINE_string("output", None, "the prepared directory (local or gs://)")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "sentencepiece .model; '' = built-in")
_MAX_SEQ_LENGTH = flags.DEFINE_integer("max_seq_length", 128, "tokens per pair")
_SHORT_SEQ_PROB = flags.DEFINE_float("short_seq_prob", 0.1, "share of shorter targets")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the pairs (shard k uses seed + k)")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 8, "shards per split")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data directory")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "text field of a tfds source")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace a non-empty --output")


def _import_beam():
  """apache_beam, imported without the notices its optional modules log."""
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.ERROR)
  try:
    import apache_beam  # pylint: disable=import-outside-toplevel
  finally:
    root.setLevel(level)
  return apache_beam


def pipeline_options(args: list[str]):
  """Beam's options from the flags absl did not know; an unknown one is a
  UserError (Beam itself would drop it with a warning)."""
  from apache_beam.options import pipeline_options as po  # pylint: disable=import-outside-toplevel
  parser = po._BeamArgumentParser(allow_abbrev=False)  # pylint: disable=protected-access
  for cls in po.PipelineOptions.__subclasses__():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  _, unknown = parser.parse_known_args(args)
  if unknown:
    raise UserError(f"unknown flag {unknown[0]} (neither lmjax's nor a Beam pipeline "
                    "option; see --helpfull)")
  given = {a.split("=")[0] for a in args}
  defaults = []  # locally: the DirectRunner with one worker process per core
  if "--direct_num_workers" not in given:
    defaults.append(f"--direct_num_workers={os.cpu_count() or 1}")
  if "--direct_running_mode" not in given:
    defaults.append("--direct_running_mode=multi_processing")
  if "--default_sdk_harness_log_level" not in given:  # the workers' start and exit notices
    level = "INFO" if absl_logging.get_verbosity() >= 0 else "ERROR"
    defaults.append(f"--default_sdk_harness_log_level={level}")
  return po.PipelineOptions(defaults + args)


def _is_remote(path: str) -> bool:
  return "://" in path


def _staging(output: str, overwrite: bool) -> str:
  """Where the shards are written: a fresh local DIR.tmp-PID (renamed into
  place at the end), or the bucket directory itself (metadata last)."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  if _is_remote(output):
    meta = FileSystems.join(output, shards.METADATA)
    if FileSystems.exists(meta):
      if not overwrite:
        raise UserError(f"{output} holds a prepared directory; use --overwrite")
      FileSystems.delete([meta])
    return output
  occupied = os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output))
  if occupied and not overwrite:
    raise UserError(f"{output} is not empty; use --overwrite to replace it")
  try:
    return os.fspath(staging_directory(output.rstrip("/")))
  except OSError as e:
    raise UserError(f"{output}: cannot write there ({e.strerror})") from None


def _finish(staging: str, output: str, source: str, settings: Settings) -> shards.Metadata:
  """Writes missing (empty) shards and metadata.json, then puts the
  directory in place."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel

  from lmjax.data import beam_pipeline  # pylint: disable=import-outside-toplevel
  counts_path = FileSystems.join(staging, beam_pipeline.SHARDS_FILE)
  with FileSystems.open(counts_path) as f:
    written = json.loads(f.read())
  FileSystems.delete([counts_path])
  splits = {}
  for split in sorted({s["split"] for s in written}, key=shards.SPLITS.index):
    found = {s["shard"]: s for s in written if s["split"] == split}
    splits[split] = split_entry([
        found.get(i) or _empty_shard(staging, split, i, settings.num_shards)
        for i in range(settings.num_shards)])
  meta = metadata(source, settings, splits)
  if _is_remote(output):
    with FileSystems.create(FileSystems.join(output, shards.METADATA)) as f:
      f.write((json.dumps(meta.to_json(), indent=2) + "\n").encode())
    return meta
  meta.write(staging)
  if os.path.exists(output):
    shutil.rmtree(output) if os.path.isdir(output) else os.remove(output)
  os.replace(staging, output)
  return meta


def _empty_shard(directory: str, split: str, index: int, count: int) -> dict:
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  name = shards.shard_name(split, index, count)
  if _is_remote(directory):
    raise UserError(f"{directory}: shard {name} was not written")
  path = FileSystems.join(directory, name)
  shards.write_shard(path, [])
  return dict(file=name, pairs=0, bytes=os.path.getsize(path))


def run(source: str, output: str, settings: Settings, args: list[str],
        data_dir: str | None = None, text_field: str = "text",
        overwrite: bool = False) -> dict:
  """Prepares `source` into `output` on Beam; returns the summary."""
  settings.check()
  sources.check_text_source(source)
  beam = _import_beam()
  from apache_beam.metrics.metric import MetricsFilter  # pylint: disable=import-outside-toplevel

  from lmjax.data import beam_pipeline  # pylint: disable=import-outside-toplevel
  options = pipeline_options(args)
  try:
    pipeline = beam.Pipeline(options=options)
  except ValueError as e:  # an unknown --runner, say
    raise UserError(f"Beam: {first_line(e)}") from None
  staging = _staging(output, overwrite)
  start = time.perf_counter()
  try:
    with console.dropping(2, console.BEAM_WORKERS), pipeline:
      beam_pipeline.build(pipeline, source, staging, settings, data_dir, text_field)
    result = pipeline.result
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter())["counters"]}
    if not counters.get("documents"):
      raise UserError(f"{source}: empty corpus (no document with any text)")
    meta = _finish(staging, output, source, settings)
  finally:
    if staging != output:
      shutil.rmtree(staging, ignore_errors=True)
  seconds = time.perf_counter() - start
  megabytes = counters.get("bytes", 0) / 1e6
  return dict(output=output, seconds=round(seconds, 1), text_mb=round(megabytes, 2),
              mb_per_s=round(megabytes / seconds, 2),
              undecodable_lines=counters.get("undecodable_lines", 0),
              **{split: meta.counts(split) for split in meta.splits})


def main(argv):
  args = argv[1:]
  cli.require(_SOURCE, _OUTPUT)
  logging.getLogger("apache_beam").setLevel(logging.ERROR)  # workers' notices are noise here
  tokenizer = Tokenizer.load(_TOKENIZER.value or builtin.TOKENIZER_FILE)
  settings = Settings(tokenizer.files, _MAX_SEQ_LENGTH.value, _SHORT_SEQ_PROB.value,
                      _SEED.value, _NUM_SHARDS.value)
  summary = run(_SOURCE.value, _OUTPUT.value, settings, args, _DATA_DIR.value,
                _TEXT_FIELD.value, _OVERWRITE.value)
  splits = "; ".join(f"{s} {summary[s]['pairs']:,} pairs from {summary[s]['documents']:,} "
                     f"documents" for s in shards.SPLITS if s in summary)
  print(f"prepared {_SOURCE.value} into {summary['output']}: {splits}; "
        f"{summary['text_mb']:,} MB of text in {summary['seconds']}s "
        f"({summary['mb_per_s']} MB/s)", flush=True)
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  cli.run(main, known_only=True)
