"""One path layer for a run's files: local paths and buckets alike.

Everything a run reads or writes in its workdir (config, tokenizer,
metrics, TensorBoard events, summary, predictions, checkpoints) goes through
`etils.epath`, the layer Orbax writes checkpoints with, so `--workdir=gs://
bucket/run` works like a local directory (gs:// through gcsfs).

Objects in a bucket appear whole when written and cannot be appended to;
local files get the same whole-or-nothing writes through a temporary file
and a rename. No jax here: data code uses it too.
"""

import os

from etils import epath

from lmjax.errors import UserError, first_line

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  """True for a URI with a scheme (gs://, s3://), false for a local path."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """`path` as an epath.Path: a URI as it is, a local path absolute with ~
  expanded (Orbax restores only from absolute paths)."""
  text = os.fspath(path)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def check_workdir(path: PathLike) -> epath.Path:
  """`path` resolved; UserError when it is a file, or a bucket that cannot be
  reached (no credentials, no such bucket, no network)."""
  if not str(path).strip():
    raise UserError("--workdir is empty; name a directory")
  workdir = resolve(path)
  try:
    if workdir.exists() and not workdir.is_dir():
      raise UserError(f"--workdir={path} is a file, not a directory")
  except (OSError, ImportError, ValueError) as e:
    raise UserError(f"--workdir={path}: cannot reach it ({first_line(e)})") from None
  return workdir


def check_writable(path: PathLike) -> None:
  """UserError when local `path`, or the directory it would be made in,
  cannot be written (a read-only file system, no permission)."""
  if is_remote(path):
    return
  target = resolve(path)
  while not target.exists() and target != target.parent:
    target = target.parent
  if not os.access(target, os.W_OK):
    raise UserError(f"{path}: cannot write there (a read-only file system, or no "
                    "permission)")


def write_whole(path: PathLike, content: bytes | str) -> None:
  """Writes `content` to `path` whole or not at all."""
  path = resolve(path)
  data = content.encode() if isinstance(content, str) else content
  if is_remote(path):
    path.write_bytes(data)  # an object appears when its upload completes
    return
  tmp = path.with_name(path.name + ".tmp")
  try:
    tmp.write_bytes(data)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()  # a failed write leaves nothing behind


def copy_tree(source: PathLike, destination: PathLike) -> None:
  """Copies the files under local directory `source` into `destination`."""
  destination = resolve(destination)
  for root, _, files in os.walk(source):
    target = destination / os.path.relpath(root, source)
    target.mkdir(parents=True, exist_ok=True)
    for name in files:
      (target / name).write_bytes(epath.Path(root, name).read_bytes())
