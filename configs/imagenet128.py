"""The paper setup: BigBiGAN with 128 px G/D (ch 96) and a ResNet-50 E at 256 px, batch 2048.

Variants through the argument, e.g.
  --config=configs/imagenet128.py:encoder=revnet50x4,e_lr_mult=10   (released "large" model)
  --config=configs/imagenet128.py:highres_e=False                   (Base row: E at 128 px)
"""

from bigbigan_jax import default_config

ARGS = {
    'encoder': str,  # Encoder name, e.g. resnet50, resnet101, resnet50x2, revnet50x4.
    'highres_e': bool,  # E at 256 px (True, "High Res E") or at 128 px like G and D.
    'e_lr_mult': float,  # Encoder learning-rate multiplier (10 for the released models, UNCONFIRMED).
    'steps': int,  # E/G updates (500k for the paper's ablations, 1M for the best generator).
}


def get_config(arg: str = ''):
  args = default_config.parse_arg(arg, ARGS)
  c = default_config.base_config()
  c.name = 'imagenet128'
  c.data.dataset = 'imagenet2012'
  c.data.eval_split = 'validation'
  c.encoder.name = args.get('encoder', 'resnet50')
  c.encoder.resolution = 256 if args.get('highres_e', True) else 128
  c.optim.e_lr_mult = args.get('e_lr_mult', 1.0)
  c.num_train_steps = args.get('steps', 500_000)
  return c
