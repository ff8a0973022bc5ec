"""A few-thousand-parameter model at 32 px for smoke tests (runs in seconds on a CPU)."""

from bigbigan_jax import default_config


def get_config(arg: str = ''):
  default_config.parse_arg(arg, {})  # Takes no arguments.
  return default_config.tiny_config()
