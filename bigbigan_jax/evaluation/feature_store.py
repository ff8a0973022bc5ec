"""Features and labels kept in .npy shards, so that probes never hold a whole split.

`FeatureWriter` appends feature batches to shards in a directory (local, or gs:// and other
`etils.epath` file systems); `FeatureStore` reads them back in minibatches, shuffling shard
order and the examples of a few shards at a time. Local shards are memory-mapped; remote
ones are read into memory once, when opened. `FeatureStore.from_arrays` wraps in-memory
arrays the same way.
"""

import contextlib
import dataclasses
import io
import os
from collections.abc import Iterator

import numpy as np
from etils import epath

_FEATURES = 'features_{:05d}.npy'
_LABELS = 'labels_{:05d}.npy'


@dataclasses.dataclass(frozen=True)
class _Shard:
  """One shard's features and labels, optionally restricted to some rows."""
  features: np.ndarray  # [N, D], possibly a read-only memory map.
  labels: np.ndarray  # [N] int.
  rows: np.ndarray | None = None  # Sorted row indices, or None for all rows.

  def __len__(self) -> int:
    return len(self.labels) if self.rows is None else len(self.rows)

  def load(self) -> tuple[np.ndarray, np.ndarray]:
    """Reads the shard's (selected) rows into memory."""
    if self.rows is None:
      return np.asarray(self.features), np.asarray(self.labels)
    return np.asarray(self.features[self.rows]), np.asarray(self.labels[self.rows])

  def load_labels(self) -> np.ndarray:
    return np.asarray(self.labels if self.rows is None else self.labels[self.rows])

  def split(self, rng: np.random.Generator, fraction: float) -> tuple['_Shard', '_Shard']:
    """Splits the rows at random into (rest, about `fraction` of them)."""
    rows = np.arange(len(self.labels)) if self.rows is None else self.rows
    picked = rng.permutation(len(rows)) < round(fraction * len(rows))
    return (dataclasses.replace(self, rows=rows[~picked]),
            dataclasses.replace(self, rows=rows[picked]))


class FeatureStore:
  """Read access to features [N, D] and int labels [N] held in shards."""

  def __init__(self, shards: list[_Shard]):
    if not shards:
      raise ValueError('A FeatureStore needs at least one shard.')
    self._shards = shards

  @classmethod
  def open(cls, directory: epath.PathLike) -> 'FeatureStore':
    """Opens the shards a `FeatureWriter` wrote to `directory` (memory-mapped if local)."""
    directory = epath.Path(directory)
    shards = []
    while _has_shards(directory, len(shards)):
      index = len(shards)
      features = _load(directory / _FEATURES.format(index), memory_map=True)
      labels = _load(directory / _LABELS.format(index))
      shards.append(_Shard(features, labels))
    if not shards:
      raise FileNotFoundError(f'No feature shards in {directory}.')
    return cls(shards)

  @classmethod
  def open_all(cls, directories: list[epath.PathLike]) -> 'FeatureStore':
    """The shards of several directories (one per process) as one store, in the order given;
    a directory without shards (a process whose slice held only padding) adds none."""
    shards = [shard for directory in directories if _has_shards(directory)
              for shard in cls.open(directory)._shards]  # pylint: disable=protected-access
    if not shards:
      raise FileNotFoundError(f'No feature shards in any of {len(directories)} directories, '
                              f'such as {directories[0]}.')
    return cls(shards)

  @classmethod
  def from_arrays(cls, features: np.ndarray, labels: np.ndarray,
                  shard_size: int = 65_536) -> 'FeatureStore':
    """Wraps in-memory features [N, D] and labels [N] (no copy)."""
    if len(features) != len(labels):
      raise ValueError(f'{len(features)} feature rows but {len(labels)} labels.')
    labels = np.asarray(labels)
    return cls([_Shard(features[i:i + shard_size], labels[i:i + shard_size])
                for i in range(0, len(labels), shard_size)])

  def __len__(self) -> int:
    return sum(len(shard) for shard in self._shards)

  def largest_label(self) -> int:
    return max(int(shard.load_labels().max(initial=0)) for shard in self._shards)

  @property
  def dim(self) -> int:
    """Feature dimension D."""
    return self._shards[0].features.shape[1]

  def split(self, fraction: float, seed: int = 0) -> tuple['FeatureStore', 'FeatureStore']:
    """Splits every shard at random into (rest, held-out `fraction`)."""
    rng = np.random.default_rng(seed)
    pairs = [shard.split(rng, fraction) for shard in self._shards]
    return FeatureStore([rest for rest, _ in pairs]), FeatureStore([held for _, held in pairs])

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
              drop_remainder: bool = False,
              buffer_shards: int = 4) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (features, labels) minibatches, features as float32 whatever the stored dtype
    (converted here, on the host: XLA:CPU for a CPU without F16C cannot link float16
    conversions inside a program, e.g. under XLA_FLAGS=--xla_cpu_max_isa=SSE4_2).

    With `shuffle`, shards come in a random order and the examples of `buffer_shards`
    shards at a time (plus what the last group left over) are permuted together.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(self._shards)) if shuffle else np.arange(len(self._shards))
    first = self._shards[0]
    features = np.zeros((0, self.dim), first.features.dtype)
    labels = np.zeros((0,), first.labels.dtype)
    for start in range(0, len(order), buffer_shards):
      loaded = [self._shards[i].load() for i in order[start:start + buffer_shards]]
      features = np.concatenate([features] + [x for x, _ in loaded])
      labels = np.concatenate([labels] + [y for _, y in loaded])
      if shuffle:
        perm = rng.permutation(len(labels))
        features, labels = features[perm], labels[perm]
      full = len(labels) - len(labels) % batch_size
      for i in range(0, full, batch_size):
        yield features[i:i + batch_size].astype(np.float32), labels[i:i + batch_size]
      features, labels = features[full:], labels[full:]
    if len(labels) and not drop_remainder:
      yield features.astype(np.float32), labels


class FeatureWriter:
  """Appends feature batches to .npy shards of `shard_size` examples in a directory.

  Use as a context manager, or call `close()` to write the last, partial shard.
  """

  def __init__(self, directory: epath.PathLike, shard_size: int = 8192,
               dtype: np.dtype = np.float16):
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / _FEATURES.format(0)).exists():
      raise FileExistsError(f'{directory} already holds feature shards.')
    self._directory = directory
    self._shard_size = shard_size
    self._dtype = dtype
    self._features = []
    self._labels = []
    self._buffered = 0
    self._num_shards = 0

  def append(self, features: np.ndarray, labels: np.ndarray) -> None:
    """Adds a batch of features [B, D] and labels [B]."""
    if len(features) != len(labels):
      raise ValueError(f'{len(features)} feature rows but {len(labels)} labels.')
    self._features.append(np.asarray(features, self._dtype))
    self._labels.append(np.asarray(labels, np.int32))
    self._buffered += len(labels)
    while self._buffered >= self._shard_size:
      self._write(self._shard_size)

  def close(self) -> FeatureStore | None:
    """Writes what is buffered and returns the store of everything written (None if nothing
    was)."""
    if self._buffered:
      self._write(self._buffered)
    return FeatureStore.open(self._directory) if self._num_shards else None

  def __enter__(self) -> 'FeatureWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    if exc_info[0] is None:
      self.close()

  def _write(self, count: int) -> None:
    """Writes the first `count` buffered examples as the next shard (features last)."""
    features = np.concatenate(self._features)
    labels = np.concatenate(self._labels)
    for name, array in ((_LABELS, labels), (_FEATURES, features)):
      with (self._directory / name.format(self._num_shards)).open('wb') as f:
        np.save(f, array[:count])
    self._features, self._labels = [features[count:]], [labels[count:]]
    self._buffered -= count
    self._num_shards += 1


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on the local file system (not gs:// or another URI scheme)."""
  return '://' not in os.fspath(path)


def remove_empty_directories(*directories: epath.Path) -> None:
  """Removes each local directory that is empty; object stores have no directories to remove."""
  for directory in directories:
    if is_local(directory):
      with contextlib.suppress(OSError):  # Not empty, or already gone.
        os.rmdir(directory)


def _has_shards(directory: epath.PathLike, index: int = 0) -> bool:
  return (epath.Path(directory) / _FEATURES.format(index)).exists()


def _load(path: epath.Path, memory_map: bool = False) -> np.ndarray:
  if is_local(path):
    return np.load(os.fspath(path), mmap_mode='r' if memory_map else None)
  return np.load(io.BytesIO(path.read_bytes()))
