"""FineWeb token shards in modded-nanogpt's ``.bin`` format.

Each shard (e.g. ``fineweb_train_000001.bin``, ``fineweb_val_000000.bin``, as
written by modded-nanogpt's ``data/cached_fineweb10B.py``) is a header of 256
little-endian ``int32`` -- ``[20240520, 1, num_tokens, 0, ...]``: magic number,
version, token count -- followed by ``num_tokens`` little-endian ``uint16``
GPT-2 token ids. https://github.com/KellerJordan/modded-nanogpt
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from examples.data import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
#: GPT-2's vocabulary (50,257 ids) rounded up to a multiple of 64.
VOCAB_SIZE = 50304
EXPECTED = ("FineWeb token shards '*train*.bin' (and optionally '*val*.bin') "
            f"in modded-nanogpt's format (a 256-int32 header: magic {MAGIC}, "
            f"version {VERSION}, token count; then uint16 tokens)")


def read_shard(path: str | Path) -> np.ndarray:
  """The tokens of one shard, as a read-only ``uint16`` memory map.

  Raises:
    DataError: the header's magic number, version or token count does not
      match the file.
  """
  path = Path(path)
  size = path.stat().st_size
  if size < HEADER_BYTES:
    raise DataError(
        f"{str(path)!r}: {size} bytes is shorter than the {HEADER_BYTES}-byte "
        "header of a FineWeb .bin shard.")
  header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
  if header[0] != MAGIC or header[1] != VERSION:
    raise DataError(
        f"{str(path)!r}: header starts {header[0]}, {header[1]}; expected "
        f"magic {MAGIC} and version {VERSION} (modded-nanogpt's .bin format).")
  num_tokens = int(header[2])
  if size != HEADER_BYTES + 2 * num_tokens:
    raise DataError(
        f"{str(path)!r}: the header says {num_tokens} tokens ("
        f"{HEADER_BYTES + 2 * num_tokens} bytes in all) but the file has "
        f"{size} bytes.")
  return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES,
                   shape=(num_tokens,))


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
  """Writes ``tokens`` (ids below 65,536) as one shard in the same format."""
  tokens = np.asarray(tokens)
  if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
    raise ValueError("token ids must lie in [0, 65536) to fit uint16.")
  header = np.zeros(HEADER_INTS, dtype="<i4")
  header[:3] = MAGIC, VERSION, tokens.size
  with open(path, "wb") as f:
    f.write(header.tobytes())
    f.write(tokens.astype("<u2").tobytes())


def find(data_dir: str | Path) -> tuple[list[Path], list[Path]]:
  """The sorted train and validation shards in ``data_dir``."""
  data_dir = Path(data_dir)
  if not data_dir.is_dir():
    raise DataError(
        f"--data-dir {str(data_dir)!r} is not a directory; expected a folder "
        f"of {EXPECTED}.")
  train = sorted(data_dir.glob("*train*.bin"))
  val = sorted(data_dir.glob("*val*.bin"))
  if not train:
    raise DataError(
        f"--data-dir {str(data_dir)!r}: expected {EXPECTED}; found no "
        "'*train*.bin' file.")
  return train, val


def load(data_dir: str | Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Memory-mapped train and validation shards from ``data_dir``.

  Returns:
    ``(train_shards, val_shards)``: lists of ``uint16`` token arrays. With no
    ``*val*.bin`` file the validation list is empty and the caller holds out
    part of the training tokens.
  """
  train, val = find(data_dir)
  return [read_shard(p) for p in train], [read_shard(p) for p in val]
