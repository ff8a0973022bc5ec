"""Evaluating a training run from its workdir: a checkpoint, the initial state or raw pixels;
and the demo's three-line answer. What `python -m bigbigan_jax.evaluate` and
`python -m bigbigan_jax.demo` run; no flags here.
"""

import json
import os
import re
from typing import Optional, Sequence

import jax
from absl import logging
from etils import epath

from bigbigan_jax import run_dir
from bigbigan_jax.evaluation import encoder_statistics, evaluator


class UsageError(Exception):
  """A problem the user fixes on the command line; printed as one line."""


def _apply_eval_settings(config, settings: Sequence[str]) -> str:
  """Applies KEY=VALUE settings to config.eval; returns the file-name suffix naming them."""
  suffix = ''
  for setting in settings:
    key, sep, value = setting.partition('=')
    if not sep or key not in config.eval:
      raise UsageError(f'--set={setting} must be KEY=VALUE with KEY one of '
                       f'{", ".join(sorted(config.eval))}.')
    kind = type(config.eval[key])
    try:
      config.eval[key] = value if kind is str else kind(value)
    except ValueError:
      raise UsageError(
          f'--set={setting}: {value!r} is not a valid {kind.__name__} for {key}.') from None
    suffix += '_' + re.sub(r'[^A-Za-z0-9._]+', '-', f'{key}-{value}').strip('-')
  return suffix


def _state(config, workdir, mesh, step: Optional[int], init: bool):
  """(step, state) to evaluate, from a checkpoint or the initialisation."""
  if init:
    return 0, encoder_statistics.with_measured_statistics(config, mesh,
                                                          run_dir.initial_state(config, mesh))
  try:
    step = run_dir.chosen_step(workdir, step, 'train first or pass --init')
  except run_dir.MissingCheckpoint as e:
    raise UsageError(str(e)) from None
  return step, run_dir.read_checkpoint(workdir, step, config, mesh)


def evaluate_run(workdir, *, step: Optional[int] = None, init: bool = False,
                 raw_pixels: bool = False, live_encoder: bool = False,
                 settings: Sequence[str] = ()) -> tuple[epath.Path, dict]:
  """Evaluates a run's checkpoint (default the newest), its initial state or raw pixels, writes
  the metrics to `<workdir>/eval_<name>.json` and returns (that path, the metrics).

  `live_encoder` evaluates the checkpoint's E itself instead of its EMA (eval_<step>_live_encoder).
  """
  if init + raw_pixels + (step is not None) > 1:
    raise UsageError('Pass at most one of --step, --init and --raw_pixels.')
  if live_encoder and (init or raw_pixels):
    raise UsageError("--live_encoder evaluates a checkpoint's E; pass it without --init and "
                     '--raw_pixels.')
  workdir = epath.Path(workdir).absolute()  # Orbax restores from absolute paths only.
  config = run_dir.load_config(workdir)
  suffix = _apply_eval_settings(config, settings)
  evaluate = evaluator.Evaluator(config, workdir)
  if raw_pixels:
    name, metrics = 'raw_pixels', evaluate.raw_pixels()
  else:
    step, state = _state(config, workdir, evaluate.mesh, step, init)
    name = str(step)
    if live_encoder:
      state = state.replace(e_ema_params=state.e_params, e_ema_batch_stats=state.e_batch_stats)
      name += '_live_encoder'
    metrics = evaluate(state, step)
  path = workdir / f'eval_{name}{suffix}.json'
  if jax.process_index() == 0:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + '\n')
  logging.info('Wrote %s: %s', path, metrics)
  return path, metrics


QUICK_PROBE_EXAMPLES = 10_000


def quick_summary(workdir, step: int) -> str:
  """E at `step` against raw pixels and E at initialisation, each with a quick linear probe (fit
  on the first QUICK_PROBE_EXAMPLES train images, scored on the whole eval split), in three
  lines for a person: the scores, the baselines, the image grids of that step."""
  settings = (f'num_train_examples={QUICK_PROBE_EXAMPLES}',)
  trained = evaluate_run(workdir, step=step, settings=settings)[1]
  init = evaluate_run(workdir, init=True, settings=settings)[1]
  pixels = evaluate_run(workdir, raw_pixels=True, settings=settings)[1]
  config = run_dir.load_config(workdir)
  pct = lambda metrics, key: f'{100 * metrics[key]:.1f}%'
  scores = lambda m: f'{pct(m, "probe/top1")} (1-NN {pct(m, "knn/cosine_k1")})'
  images = os.path.join(workdir, 'images')
  return '\n'.join([
      f'E after {step} steps: linear probe {scores(trained)}, {config.eval.feature} features, '
      f'probe fit on {int(trained["num_train_examples"]):,} train images, scored on '
      f'{int(trained["num_eval_examples"]):,} {config.data.eval_split} images.',
      f'Same probe on raw pixels: {scores(pixels)}; on E at initialisation: {scores(init)}.',
      f'Images: {os.path.join(images, f"samples_{step:07d}.png")} and '
      f'{os.path.join(images, f"reconstructions_{step:07d}.png")}.',
  ])

