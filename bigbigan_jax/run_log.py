"""A run's metric writer and progress reports.

Where TensorFlow is installed: clu's writers (console and TensorBoard summaries in the workdir)
and clu's progress reports. Without it (the in-memory path on a JAX-only machine, where clu's
writers cannot be imported): the console and `<workdir>/metrics.jsonl`, and progress lines of
the same kind (steps/s, ETA). Hyperparameters go to TensorBoard only, not to the console (one
line of every config field); config.json holds them in either case.
"""

import contextlib
import importlib
import json
import logging as python_logging
import os
import sys
import time
from typing import Any, Mapping

import numpy as np
from absl import logging
from etils import epath

PROGRESS_EVERY_SECS = 60.0


# Library warnings about what this project does on purpose: orbax's note on every restore, whose
# reader is read-only.
EXPECTED_WARNINGS = ('Given directory is read only',)
# Where the log lines always kept come from: this package and clu (progress and metrics).
_OWN, _CLU = os.path.dirname(os.path.abspath(__file__)), f'{os.sep}clu{os.sep}'


def quiet_library_logs(verbosity: int) -> None:
  """Keeps other libraries' INFO lines (orbax, TFDS, JAX, TensorFlow's at import) out of the
  console unless `verbosity` (the --verbosity flag) is above 0; their warnings show without
  tracebacks. Ours and clu's progress and metric lines stay."""
  if verbosity > 0:
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # TensorFlow's C++ INFO lines after import.
  _import_tensorflow_without_its_start_up_lines()
  logging.get_absl_handler().addFilter(console_filter)


def _import_tensorflow_without_its_start_up_lines() -> None:
  """Imports TensorFlow, where installed, with the process's stderr sent to /dev/null: its C++
  libraries print "oneDNN custom operations are on ..." twice at import, with a note on
  absl::InitializeLog, whatever TF_CPP_MIN_LOG_LEVEL says. An import that fails raises after
  stderr is back."""
  if 'tensorflow' in sys.modules:
    return
  sys.stderr.flush()
  kept, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    importlib.import_module('tensorflow')
  except ImportError:
    pass  # The in-memory path runs without TensorFlow.
  finally:
    os.dup2(kept, 2)
    os.close(kept)
    os.close(devnull)


def console_filter(record: python_logging.LogRecord) -> bool:
  """Whether quiet_library_logs lets a log record reach the console."""
  if record.pathname.startswith(_OWN) or _CLU in record.pathname:
    return True
  if record.getMessage().startswith(EXPECTED_WARNINGS):
    return False
  record.exc_info = record.exc_text = None
  return record.levelno >= python_logging.WARNING  # absl's WARNING is its verbosity, -1.


def writer_and_progress(workdir: epath.Path, num_train_steps: int, log_only: bool):
  """(writer, progress): `writer.write_scalars/write_images/write_hparams/flush`, and
  `progress(step)` with `progress.timed(name)`. `log_only` (processes other than 0) writes no
  files."""
  try:
    from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top
  except ImportError:  # clu's writers import TensorFlow.
    writer = JsonLinesWriter(None if log_only else epath.Path(workdir) / 'metrics.jsonl')
    return writer, Progress(num_train_steps, writer)
  writer = _clu_writer(metric_writers, workdir, log_only)
  return writer, periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer)


def _clu_writer(metric_writers, workdir: epath.Path, log_only: bool):
  """clu's default writer (console, and TensorBoard unless `log_only`) without the console's
  hyperparameter line."""

  class ConsoleWriter(metric_writers.LoggingWriter):

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
      del hparams

  writers = [ConsoleWriter()]
  if not log_only:
    writers.append(metric_writers.SummaryWriter(os.fspath(workdir)))
  return metric_writers.AsyncMultiWriter(writers)


class JsonLinesWriter:
  """Scalars to the console and, one JSON object per call, to a file; images are left to the
  PNG grids the run writes anyway."""

  def __init__(self, path: epath.Path | None):
    self.path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in values.items()))
    if self.path is not None:
      with self.path.open('a') as f:
        f.write(json.dumps({'step': step, **values}) + '\n')

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    del step, images

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams  # config.json holds them.

  def flush(self) -> None:
    pass


class Progress:
  """Every PROGRESS_EVERY_SECS: steps/s (time in `timed` sections excluded) and the ETA."""

  def __init__(self, num_train_steps: int, writer: JsonLinesWriter):
    self.num_train_steps, self.writer = num_train_steps, writer
    self.last_step, self.last_time, self.paused = None, time.monotonic(), 0.0

  def __call__(self, step: int) -> None:
    now = time.monotonic()
    if self.last_step is None:
      self.last_step, self.last_time, self.paused = step, now, 0.0
      return
    if now - self.last_time < PROGRESS_EVERY_SECS:
      return
    rate = (step - self.last_step) / max(now - self.last_time - self.paused, 1e-9)
    eta = (self.num_train_steps - step) / rate if rate > 0 else float('inf')
    logging.info('%.1f steps/s, %.1f%% (%d/%d), ETA: %.0f min', rate,
                 100 * step / self.num_train_steps, step, self.num_train_steps, eta / 60)
    self.writer.write_scalars(step, {'steps_per_sec': rate})
    self.last_step, self.last_time, self.paused = step, now, 0.0

  @contextlib.contextmanager
  def timed(self, name: str):
    start = time.monotonic()
    try:
      yield
    finally:
      self.paused += time.monotonic() - start
      logging.info('%s took %.1f s.', name, time.monotonic() - start)
