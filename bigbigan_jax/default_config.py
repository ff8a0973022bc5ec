"""The full set of config fields with their paper defaults, and a tiny variant for tests.

Config files in configs/ start from `base_config()` and change what their setup needs.
Values SPEC.md marks as unconfirmed say so in their comment.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """BigBiGAN at 128 px with a ResNet-50 encoder at 256 px (the paper's High Res E setup)."""
  c = ml_collections.ConfigDict()
  c.name = 'bigbigan'  # Run name; --workdir defaults to runs/<name>.
  c.seed = 0  # Seeds parameters, latents and the data order.
  # Fields a resumed run may change besides the bookkeeping ones (comma-separated, a section
  # name covers its fields), e.g. 'optim.d_lr,optim.g_lr'; others must match config.json.
  c.allow_changes = ''

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'imagenet2012'  # TFDS name, 'fashion_mnist_local' or 'folder:<path>'.
  c.data.train_split = 'train'  # TFDS split the model trains on.
  c.data.eval_split = 'validation'  # TFDS split for evaluation (linear probe test side).
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir.
  c.data.num_channels = 3  # Image channels G makes and E and F read (1 for grayscale).
  c.data.augment = 'inception_crop'  # 'inception_crop' (ResNet-style) or 'resize' (none).
  c.data.random_flip = True  # Random horizontal flip of training images.
  c.data.shuffle_buffer = 16_384  # Examples in the tf.data shuffle buffer per process.
  c.data.prefetch = 2  # Batches prefetched to the devices.
  c.data.tf_threads = 0  # tf.data's private thread pool per process; 0: all cores.
  # Keep the split on every device and batch, shuffle and augment there (augment='resize'
  # only); reads a .npz cache without TensorFlow. For datasets that fit in device memory.
  c.data.in_memory = False
  c.data.cache_dir = ''  # The in-memory path's .npz cache; '' = <data_dir or ~/tensorflow_datasets>/in_memory.

  c.model = ml_collections.ConfigDict()
  c.model.resolution = 128  # G output and F input size: 32, 64, 128 or 256.
  c.model.z_dim = 120  # Latent size; hierarchical z splits it over the stem and G blocks.
  c.model.g_ch = 96  # BigGAN G width `ch`.
  c.model.d_ch = 96  # BigGAN D (F) width `ch`.
  c.model.embed_dim = 128  # Single-label embedding size (BigGAN shared_dim).
  c.model.g_attn_res = (64,)  # Resolutions with self-attention in G.
  c.model.d_attn_res = (64,)  # Resolutions with self-attention in F.
  c.model.hj_depth = 8  # Dense layers in H and J (residual pairs); UNCONFIRMED.
  c.model.hj_width = 2048  # Width of H and J; UNCONFIRMED.
  c.model.hj_spectral_norm = True  # SN on H and J layers; UNCONFIRMED.
  c.model.sn_eps = 1e-6  # Spectral-norm epsilon (BigGAN-PyTorch training value).
  c.model.bn_eps = 1e-5  # BatchNorm epsilon in G and E (BigGAN-PyTorch training value).
  c.model.bn_momentum = 0.99  # Running-statistics momentum of E's BatchNorm.
  c.model.attention = 'auto'  # 'auto' (cuDNN on GPU in bf16/f16, else chunked), 'fused', 'chunked', 'dense'.
  c.model.attention_chunk = 1024  # Query rows per block of the chunked attention.
  # Recompute each G/D/E block in the backward pass: less memory, ~13% more FLOPs (XLA's CPU
  # count of the paper config at batch 128, d_steps 1: 55.85 vs 49.44 TFLOP/step).
  c.model.remat = False

  c.encoder = ml_collections.ConfigDict()
  c.encoder.name = 'resnet50'  # resnet{26,50,101} or revnet{26,50,101}, optional 'x2'/'x4'.
  c.encoder.base_width = 64  # Channels of the first stage's bottleneck before the multiplier.
  c.encoder.resolution = 256  # E input size; D sees it 2x2 average-pooled when 2x G's.
  c.encoder.head_depth = 4  # Dense layers of E's residual MLP head; UNCONFIRMED.
  c.encoder.head_width = 4096  # Width of E's MLP head; UNCONFIRMED.
  c.encoder.stochastic = True  # Reparameterised z sample; False = Deterministic E ablation.
  c.encoder.min_stdev = 0.0  # Floor added to softplus spread (paper: none).

  c.loss = ml_collections.ConfigDict()
  c.loss.reduction = 'sum'  # 'sum' of the three score terms (paper) or 'mean' (official demo, 1/3).
  c.loss.use_sx = True  # Keep the unary s_x term (False = z Unary Only ablation).
  c.loss.use_sz = True  # Keep the unary s_z term (False = x Unary Only ablation).
  # Differentiable augmentation of D's image inputs, real and generated alike ('translation',
  # 'cutout' or both, comma-separated; '' = none as in the paper). See d_augment.py.
  c.loss.d_augment = ''

  c.optim = ml_collections.ConfigDict()
  c.optim.d_lr = 2e-4  # D learning rate (BigGAN); UNCONFIRMED for BigBiGAN.
  c.optim.g_lr = 5e-5  # G learning rate (BigGAN); UNCONFIRMED for BigBiGAN.
  c.optim.e_lr_mult = 1.0  # E learning rate = e_lr_mult * g_lr; 10 for the released models, UNCONFIRMED.
  # E's multiplier after given steps, 'STEP:MULT,...' ('' = e_lr_mult throughout; not in the
  # paper). See e_lr_schedule.py.
  c.optim.e_lr_schedule = ''
  c.optim.b1 = 0.0  # Adam beta1 (BigGAN); UNCONFIRMED for BigBiGAN.
  c.optim.b2 = 0.999  # Adam beta2 (BigGAN); UNCONFIRMED for BigBiGAN.
  c.optim.eps = 1e-6  # Adam epsilon (BigGAN-PyTorch launch script).
  c.optim.d_steps = 2  # D updates per E/G update (BigGAN); UNCONFIRMED for BigBiGAN.
  c.optim.ortho_reg = 0.0  # BigGAN modified orthogonal regularisation on G (1e-4 in BigGAN); UNCONFIRMED.
  c.optim.ema_decay = 0.9999  # EMA of G's parameters (TF-Hub variable suffix ema_0.9999).
  c.optim.ema_start = 20_000  # Step before which the EMA copies G exactly (BigGAN-PyTorch).
  # The E evaluated and exported is an EMA of E's parameters and BN statistics; at decay 0 it
  # is E itself (the paper's use of one is UNCONFIRMED).
  c.optim.e_ema_decay = 0.0
  c.optim.e_ema_start = 0  # Step before which E's EMA copies E exactly.

  c.batch_size = 2048  # Global batch of real images (and of prior samples) per update.
  c.num_train_steps = 500_000  # E/G updates (train-step calls).
  c.dtype = 'bfloat16'  # Activation dtype; params, BN, SN and losses stay float32.
  c.float32_residuals = False  # Residual sums, attention logits, G's stem and H in float32 under bf16.

  c.log_every_steps = 100  # Scalar metrics period.
  c.image_every_steps = 5_000  # Sample and reconstruction grid period.
  c.num_grid_images = 64  # Images in each grid (a square number).
  c.checkpoint_every_steps = 5_000  # Checkpoint period.
  c.keep_checkpoints = 3  # Newest checkpoints kept.
  c.standing_stats_batches = 16  # Batches of z to accumulate G's standing BN statistics.

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 50_000  # Periodic evaluation during training (0 = never).
  c.eval.num_train_examples = 0  # Linear-probe train examples (0 = the whole split).
  c.eval.num_eval_examples = 0  # Linear-probe test examples (0 = the whole split).
  c.eval.feature = 'avepool_feat'  # 'avepool_feat' or 'bn_crelu_feat'.
  c.eval.batch_size = 512  # Feature extraction batch.
  c.eval.init_bn_batches = 20  # --init: train batches measuring E's BN statistics (0: keep).
  c.eval.probe_epochs = 30  # Linear-probe epochs.
  c.eval.num_fid_samples = 50_000  # Samples for FID/IS (paper: 50K).
  c.eval.inception_weights = ''  # Local .npz of Inception-v3 weights; empty = skip FID/IS.
  return c


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """A few-thousand-parameter model at 32 px for CPU tests; keyword args override model fields.

  Keys are dotted paths such as `model__g_ch=8` (double underscore for the dot).
  """
  c = base_config()
  c.name = 'tiny'
  c.data.dataset = 'imagenet2012'  # Tests replace it with tfds.testing.mock_data.
  c.data.num_channels = 3
  c.data.shuffle_buffer = 64
  c.data.tf_threads = 1
  c.model.resolution = 32
  c.model.z_dim = 16
  c.model.g_ch = 4
  c.model.d_ch = 4
  c.model.embed_dim = 8
  c.model.g_attn_res = (16,)
  c.model.d_attn_res = (16,)
  c.model.hj_depth = 2
  c.model.hj_width = 16
  c.encoder.name = 'resnet26'
  c.encoder.base_width = 4
  c.encoder.resolution = 32
  c.encoder.head_depth = 2
  c.encoder.head_width = 16
  c.optim.ema_start = 0
  c.optim.ema_decay = 0.9
  c.optim.e_ema_decay = 0.9
  c.optim.d_steps = 1
  c.batch_size = 8
  c.num_train_steps = 4
  c.dtype = 'float32'
  c.log_every_steps = 1
  c.image_every_steps = 2
  c.num_grid_images = 4
  c.checkpoint_every_steps = 2
  c.standing_stats_batches = 2
  c.eval.every_steps = 0
  c.eval.batch_size = 8
  c.eval.probe_epochs = 2
  c.eval.num_fid_samples = 16
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('__')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def parse_arg(arg: str, allowed: dict[str, type]) -> dict[str, object]:
  """Parses a config file's `get_config` argument 'key=value,key=value' (big_vision style)."""
  out = {}
  for item in filter(None, (arg or '').split(',')):
    key, _, value = item.partition('=')
    if key not in allowed:
      takes = f'it takes {", ".join(sorted(allowed))}' if allowed else 'it takes none'
      raise ValueError(f'Unknown config argument {key!r}; {takes}.')
    kind = allowed[key]
    if kind is bool:
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'Config argument {key}={value!r} must be True or False.')
      out[key] = value.lower() in ('true', '1')
    else:
      out[key] = kind(value)
  return out
