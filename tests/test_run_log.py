"""A run's metric writer: scalars on the console and in TensorBoard (or metrics.jsonl without
TensorFlow); hyperparameters in TensorBoard only, never as a console line. The console filter:
our lines and library warnings, no library INFO, no warning we cause on purpose; TensorFlow
imported without the lines its C++ libraries print."""

import json
import logging
import os
import platform
import subprocess
import sys

import orbax.checkpoint as ocp
from tensorboard.plugins.hparams import plugin_data_pb2

from bigbigan_jax import parallel, run_dir, run_log

HPARAMS = {'optim.d_lr': 2e-4, 'model.g_ch': 96, 'name': 'a_marked_run_name'}


def _write(workdir, log_only=False):
  writer, _ = run_log.writer_and_progress(workdir, num_train_steps=10, log_only=log_only)
  writer.write_hparams(HPARAMS)
  writer.write_scalars(1, {'loss_d': 0.5})
  writer.flush()


def _tensorboard_hparams(workdir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  found = []
  for path in workdir.glob('events.out.tfevents.*'):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'hparams':
          data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
          found.extend(data.session_start_info.hparams)
  return set(found)


def test_hparams_go_to_tensorboard_and_not_the_console(tmp_path, caplog):
  with caplog.at_level(logging.INFO, logger='absl'):  # absl flag parsing may set WARNING.
    _write(tmp_path)
  console = caplog.text
  assert 'loss_d' in console  # Scalars still reach the console.
  assert '[Hyperparameters]' not in console and 'a_marked_run_name' not in console
  assert _tensorboard_hparams(tmp_path) == set(HPARAMS)


def test_other_processes_log_scalars_and_write_no_files(tmp_path, caplog):
  with caplog.at_level(logging.INFO, logger='absl'):  # absl flag parsing may set WARNING.
    _write(tmp_path, log_only=True)
  assert 'loss_d' in caplog.text and 'a_marked_run_name' not in caplog.text
  assert not list(tmp_path.iterdir())


def test_without_tensorflow_scalars_go_to_metrics_jsonl_and_hparams_nowhere(
    tmp_path, caplog, monkeypatch):
  import clu  # pylint: disable=g-import-not-at-top
  monkeypatch.delattr(clu, 'metric_writers', raising=False)  # As if TensorFlow were missing.
  monkeypatch.setitem(sys.modules, 'clu.metric_writers', None)
  with caplog.at_level(logging.INFO, logger='absl'):  # absl flag parsing may set WARNING.
    _write(tmp_path)
  assert 'loss_d=0.5' in caplog.text and 'a_marked_run_name' not in caplog.text
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line) for line in lines] == [{'step': 1, 'loss_d': 0.5}]


def _record(pathname, level, message):
  return logging.LogRecord('absl', level, pathname, 1, message, None, None)


def test_console_keeps_our_lines_and_library_warnings_only():
  ours = os.path.join(os.path.dirname(run_log.__file__), 'train.py')
  orbax = os.path.join(os.path.dirname(ocp.__file__), 'checkpoint_manager.py')
  assert run_log.console_filter(_record(ours, logging.INFO, 'Compiled the train step in 9 s.'))
  assert not run_log.console_filter(_record(orbax, logging.INFO, 'Saving checkpoint at step 4'))
  assert run_log.console_filter(_record(orbax, logging.WARNING, 'Checkpoint step 4 is damaged'))
  # What our own read-only restore makes orbax say each time.
  for message in run_log.EXPECTED_WARNINGS:
    assert not run_log.console_filter(_record(orbax, logging.WARNING, f'{message}=/runs/x'))


def test_a_restore_makes_orbax_warn_nothing_beyond_the_expected(tiny_run, caplog):
  workdir, _ = tiny_run
  config = run_dir.load_config(str(workdir))
  manager = run_dir.checkpoint_reader(run_dir.path(str(workdir)))
  with caplog.at_level(logging.WARNING):
    run_dir.restore_or_init(config, parallel.make_mesh(), manager)
  manager.close()
  warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert warnings and all(not run_log.console_filter(r) for r in warnings), caplog.text


def test_tensorflow_starts_without_its_console_lines_and_stderr_still_reaches_the_console():
  script = ('import sys\nfrom bigbigan_jax import run_log\nrun_log.quiet_library_logs({})\n'
            'import tensorflow as tf\nprint("after import", file=sys.stderr)\n'
            'print("imported", tf.__version__)')
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}  # Which, alone, does not silence them.
  quiet, verbose = [subprocess.run([sys.executable, '-c', script.format(v)], env=env, text=True,
                                   capture_output=True, check=True) for v in (0, 1)]
  assert 'imported' in quiet.stdout and 'after import' in quiet.stderr
  assert 'oneDNN' not in quiet.stderr and 'InitializeLog' not in quiet.stderr, quiet.stderr
  # --verbosity 1 keeps them (TensorFlow's x86 builds, the ones with oneDNN, print them).
  assert 'after import' in verbose.stderr
  assert 'oneDNN' in verbose.stderr or platform.machine() not in ('x86_64', 'AMD64')
