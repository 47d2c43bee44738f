"""The cache of per-corpus work that every run of a corpus shares: its
pairs prepared in-process on first use (any source that is not `prepared:`),
and tokenizers learned from it (`data.tokenizer=learn:N`). Entries are keyed
by everything that shapes them and written whole (renamed into place), so
processes may share one cache.
"""

import hashlib
import os
import shutil
import time
from pathlib import Path

from lmjax.data import shards, sources, tokenization
from lmjax.data.shard_writing import Settings, prepare_in_process
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import ConfigError, UserError

CACHE_VERSION = "2"
LEARN = "learn:"  # data.tokenizer=learn:N: a tokenizer learned from the corpus
_LEARN_THREADS = 4  # fixed: sentencepiece's model depends on its thread count


def cache_dir(data_config) -> str:
  """config.data.cache_dir, or $LMJAX_CACHE, or ~/.cache/lmjax."""
  return data_config.cache_dir or os.environ.get("LMJAX_CACHE") or str(
      Path.home() / ".cache" / "lmjax")


def cached(data, seed: int, tokenizer: Tokenizer, cache_dir: str) -> tuple[Path, dict]:
  """The prepared directory of a config's `data` source (not `prepared:`),
  made in `cache_dir` on first use. Returns (directory, info)."""
  sources.check_text_source(data.source)
  key = "|".join([CACHE_VERSION, sources.corpus_key(data.source, "train", data.data_dir or None,
                                                    data.text_field),
                  tokenizer.fingerprint, str(data.max_seq_length), str(data.short_seq_prob),
                  str(seed)])
  directory = Path(cache_dir) / f"prepared-{hashlib.sha256(key.encode()).hexdigest()[:20]}"
  if directory.exists():
    try:
      shards.check(directory)
      return directory, {"cache": "hit"}
    except UserError:
      shutil.rmtree(directory, ignore_errors=True)  # damaged: made again below
  start = time.perf_counter()
  print(f"preparing {data.source} into {directory} (once; for big corpora use "
        "python -m lmjax.prepare)", flush=True)
  settings = Settings(tokenizer.files, data.max_seq_length, data.short_seq_prob, seed)
  directory.parent.mkdir(parents=True, exist_ok=True)
  prepare_in_process(data.source, settings, directory, data.data_dir or None,
                     data.text_field)
  return directory, {"cache": "miss", "prepare_s": round(time.perf_counter() - start, 2)}


def learned_size(tokenizer_field: str) -> int | None:
  """N of a `data.tokenizer` of 'learn:N', None of a file or ''; ConfigError
  when N is not a number of pieces."""
  if not tokenizer_field.startswith(LEARN):
    return None
  size = tokenizer_field[len(LEARN):]
  if not size.isdigit() or int(size) <= tokenization.NUM_SPECIAL:
    raise ConfigError(f"config.data.tokenizer={tokenizer_field}: learn:N takes a number of "
                      f"pieces above {tokenization.NUM_SPECIAL}, e.g. learn:8000")
  return int(size)


def learned_tokenizer(data, cache_dir: str) -> Path:
  """The file of the tokenizer `data.tokenizer='learn:N'` names: a unigram
  model of N pieces (fewer if the text has too few) of the sentences of
  data.source's training split, learned into `cache_dir` on first use.
  Every process learns the same model."""
  size = learned_size(data.tokenizer)
  key = "|".join([CACHE_VERSION, sources.corpus_key(data.source, "train", data.data_dir or None,
                                                    data.text_field),
                  str(size), str(_LEARN_THREADS)])
  path = Path(cache_dir) / f"tokenizer-{hashlib.sha256(key.encode()).hexdigest()[:20]}.model"
  if path.is_file():
    try:
      Tokenizer.load(path)
      return path
    except UserError:
      path.unlink(missing_ok=True)  # damaged: learned again below
  corpus = sources.load_corpus(data.source, "train", data.data_dir or None, data.text_field)
  print(f"learning a {size:,}-piece tokenizer from {data.source} into {path} (once)",
        flush=True)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # processes may share the cache
  try:
    learned = tokenization.train((s for d in corpus.documents for s in d), size, tmp,
                                 progress=lambda _: None, num_threads=_LEARN_THREADS,
                                 at_most=True)
    os.replace(tmp, path)
    if learned.vocab_size < size:
      print(f"{data.source} is too small a text for {size:,} pieces: the tokenizer has "
            f"{learned.vocab_size:,}", flush=True)
  except UserError as e:
    raise UserError(f"config.data.tokenizer={data.tokenizer}: {e}") from None
  finally:
    tmp.unlink(missing_ok=True)
  return path
