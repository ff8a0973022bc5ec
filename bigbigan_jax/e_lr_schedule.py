"""E's learning rate over training: `optim.e_lr_schedule`, 'STEP:MULT,...'.

E's rate is `optim.g_lr` times `optim.e_lr_mult` up to update STEP, then times MULT for the
updates after it: '6000:2' trains as a run stopped at step 6,000 and resumed with
`--config.optim.e_lr_mult=2` does (a slower E once G is good; benchmarks/fashion_mnist_results.md).
Adam's update is proportional to its rate, so the step scales E's update by MULT / e_lr_mult and
the optimizer state keeps the same shape with and without a schedule.
"""

import jax.numpy as jnp


def parse(spec: str) -> tuple[tuple[int, float], ...]:
  """'6000:2,10000:1' -> ((6000, 2.0), (10000, 1.0)); '' -> (); a malformed spec raises."""
  schedule = []
  for item in filter(None, (part.strip() for part in spec.split(','))):
    try:
      step, mult = item.split(':')
      schedule.append((int(step), float(mult)))
    except ValueError:
      raise ValueError(f'optim.e_lr_schedule item {item!r} is not STEP:MULT (such as 6000:2).'
                       ) from None
  steps = [step for step, _ in schedule]
  if any(step < 1 for step in steps) or steps != sorted(set(steps)):
    raise ValueError(f'optim.e_lr_schedule={spec!r} needs steps of 1 or more, in increasing order.')
  if any(not mult > 0 for _, mult in schedule):
    raise ValueError(f'optim.e_lr_schedule={spec!r} needs multipliers above 0.')
  return tuple(schedule)


def multiplier(e_lr_mult: float, schedule: tuple[tuple[int, float], ...], step):
  """E's rate over G's for the update made after `step` E/G updates (an int or a traced array)."""
  mult = e_lr_mult
  for start, value in schedule:
    mult = jnp.where(step >= start, value, mult)
  return mult
