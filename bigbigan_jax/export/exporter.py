"""Export of one checkpoint of a run into a directory, in one of the formats.

The run is only read. The export is written into a fresh sibling directory of the output and
moved into place when complete, so a failed export leaves an earlier one intact.
"""

import os
import shutil
import tempfile
from typing import Optional

from etils import epath

from bigbigan_jax.export import networks as networks_lib

FORMATS = ('saved_model', 'onnx', 'safetensors')
DTYPES = ('float32', 'bfloat16', 'float16')
ExportError = networks_lib.ExportError


def _is_within(path: str, directory: str) -> bool:
  path, directory = os.path.realpath(path), os.path.realpath(directory)
  return path == directory or path.startswith(directory + os.sep)


def check_out(out: str, workdir: str, overwrite: bool) -> None:
  """Raises ExportError unless `out` may receive an export of the run in `workdir`."""
  if _is_within(workdir, out) or _is_within(out, os.path.join(workdir, 'checkpoints')):
    raise ExportError(f'--out={out} would hold the run or its checkpoints; choose a directory '
                      'outside them, such as the default <workdir>/export/<step>/<format>.')
  if os.path.exists(out) and not os.path.isdir(out):
    raise ExportError(f'--out={out} is a file; give a directory.')
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise ExportError(f'--out={out} exists and is not empty; pass --overwrite to replace it.')


def writer(fmt: str):
  """The format's write(networks, out_dir) and its config check (its module loads only here)."""
  # pylint: disable=g-import-not-at-top
  try:
    if fmt == 'saved_model':
      from bigbigan_jax.export import saved_model
      return saved_model.write, lambda config: None
    if fmt == 'onnx':
      from bigbigan_jax.export import onnx_models
      return onnx_models.write, onnx_models.check_expressible
    from bigbigan_jax.export import weights
  except ImportError as e:
    raise ExportError(f'--format={fmt} needs {e.name}, which is not installed; pip install '
                      "'bigbigan_jax[export]'.") from None

  def write_weights(n: networks_lib.Networks, out_dir: str) -> None:
    weights.write(n.trees(), networks_lib.config_json(n.config), n.step, out_dir)
  return write_weights, lambda config: None


def export(workdir: str, fmt: str, out: Optional[str] = None, step: Optional[int] = None,
           overwrite: bool = False, dtype: Optional[str] = None) -> str:
  """Exports checkpoint `step` of the run in `workdir` as `fmt`; returns the output directory."""
  if fmt not in FORMATS:
    raise ExportError(f'--format={fmt} is not a known format; use one of {", ".join(FORMATS)}.')
  if dtype is not None and dtype not in DTYPES:
    raise ExportError(f'--dtype={dtype} is not supported; use one of {", ".join(DTYPES)}.')
  workdir = os.path.abspath(workdir)
  if out is not None:
    check_out(out, workdir, overwrite)
  config = networks_lib.load_config(epath.Path(workdir), dtype)
  write, check_config = writer(fmt)
  check_config(config)
  step = networks_lib.resolve_step(epath.Path(workdir), step)
  if out is None:
    out = os.path.join(workdir, 'export', str(step), fmt)
    check_out(out, workdir, overwrite)
  networks = networks_lib.from_checkpoint(epath.Path(workdir), config, step)
  write_atomically(lambda out_dir: write(networks, out_dir), os.path.abspath(out))
  return out


def write_atomically(write, out: str) -> None:
  """Runs write(directory) on a fresh sibling directory of `out`, then swaps it in for `out`."""
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.', dir=parent)
  try:
    write(staging)
    _make_readable(staging)
    if os.path.isdir(out):
      shutil.rmtree(out)
    os.rename(staging, out)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def _make_readable(directory: str) -> None:
  """Gives the export the permissions of ordinary new files (mkdtemp and some writers use 0o700
  and 0o600)."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(directory, 0o777 & ~umask)
  for root, dirs, files in os.walk(directory):
    for d in dirs:
      os.chmod(os.path.join(root, d), 0o777 & ~umask)
    for f in files:
      os.chmod(os.path.join(root, f), 0o666 & ~umask)
