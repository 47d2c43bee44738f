"""Reading and writing named-tensor files: safetensors, and PyTorch's .bin safely.

The safetensors format is an 8-byte little-endian header length, a JSON
header mapping each name to its dtype, shape and byte range, then the raw
little-endian data. It is read here with numpy (and ml_dtypes for bfloat16,
which the safetensors package's numpy binding cannot represent).
"""

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from lmjax.errors import CheckpointError, first_line

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("bool"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Returns every tensor of a .safetensors file as a numpy array."""
  data = Path(path).read_bytes()
  try:
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
  except (struct.error, ValueError) as e:
    raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
  body = memoryview(data)[8 + header_len:]
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _DTYPES:
      raise CheckpointError(f"{path}: tensor {name} has unsupported dtype "
                            f"{info['dtype']}")
    begin, end = info["data_offsets"]
    array = np.frombuffer(body[begin:end], dtype=_DTYPES[info["dtype"]])
    tensors[name] = array.reshape(info["shape"])
  return tensors


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` to a .safetensors file, atomically (via a temp file)."""
  header, offset, chunks = {}, 0, []
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype.newbyteorder("<") not in _NAMES:
      raise ValueError(f"tensor {name}: dtype {array.dtype} has no safetensors name")
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    header[name] = dict(dtype=_NAMES[array.dtype.newbyteorder("<")],
                        shape=list(array.shape),
                        data_offsets=[offset, offset + len(raw)])
    chunks.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = metadata
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
  tmp = Path(f"{path}.tmp")
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for raw in chunks:
      f.write(raw)
  os.replace(tmp, path)


def read_torch_bin(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict with `weights_only=True`, which refuses any
  pickled code; needs torch installed."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointError(
        f"{path}: reading pytorch_model.bin needs torch installed; or convert "
        "the checkpoint to model.safetensors") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for unsafe or bad files
    raise CheckpointError(f"{path}: cannot be read safely ({first_line(e)})") from None
  return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
          for k, v in state.items()}
