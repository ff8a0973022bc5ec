"""Writing a cache .npz whole or not at all, the way the in-memory data and the garment
classifier keep theirs."""

import os

import numpy as np
from etils import epath


def write_whole(path: epath.Path, **arrays) -> None:
  """Writes `arrays` to the .npz `path` through a file of this process's own, then moves it
  over whatever another process wrote there meanwhile (epath's rename refuses an existing file);
  on failure nothing is left but what was there before."""
  partial = path.parent / f'{path.name}.partial-{os.getpid()}'
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with partial.open('wb') as f:
      np.savez(f, **arrays)
    partial.replace(path)
  finally:
    if partial.exists():
      partial.unlink()
