"""Tests for the FID Inception-v3 port, its weight files and the converter, on random weights."""

import sys
import types

import jax
import numpy as np
import pytest
from flax import traverse_util

from bigbigan_jax.evaluation import convert_inception_weights
from bigbigan_jax.evaluation import inception


def _random_flat_params(seed=0):
  """He-scaled random kernels and plausible BatchNorm values for every parameter."""
  rng = np.random.default_rng(seed)
  flat = {}
  for name, shape in inception.expected_shapes().items():
    leaf = name.rsplit('/', 1)[1]
    if leaf == 'kernel':
      value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif leaf in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, size=shape)
    else:
      value = rng.normal(scale=0.1, size=shape)
    flat[name] = value.astype(np.float32)
  return flat


def _variables(flat):
  return {'params': traverse_util.unflatten_dict(flat, sep='/')}


def test_outputs_and_npz_round_trip(tmp_path):
  variables = _variables(_random_flat_params())
  images = np.random.default_rng(1).uniform(-1, 1, size=(2, 24, 24, 3)).astype(np.float32)
  apply = jax.jit(inception.InceptionV3().apply)
  features, logits = apply(variables, images)
  assert features.shape == (2, inception.NUM_FEATURES)
  assert logits.shape == (2, inception.NUM_LOGITS)
  assert np.isfinite(features).all() and np.isfinite(logits).all()
  assert not np.allclose(features[0], features[1])
  path = tmp_path / 'inception.npz'
  inception.save_params(variables, path)
  loaded_features, loaded_logits = apply(inception.load_params(path), images)
  np.testing.assert_array_equal(loaded_features, features)
  np.testing.assert_array_equal(loaded_logits, logits)


def test_parameter_count_matches_fid_inception():
  # torchvision Inception-v3 without aux head (23,834,568) + 8 extra classes (16,392)
  # + BatchNorm running statistics (34,432).
  assert sum(np.prod(s) for s in inception.expected_shapes().values()) == 23_885_392


def test_resize_to_input_handles_grayscale():
  images = np.linspace(-1, 1, 2 * 8 * 8).reshape(2, 8, 8, 1)
  resized = inception.resize_to_input(images)
  assert resized.shape == (2, 299, 299, 3)
  np.testing.assert_array_equal(resized[..., 0], resized[..., 2])
  assert -1.0 <= float(resized.min()) and float(resized.max()) <= 1.0


def test_average_pool_leaves_padding_out():
  pooled = inception._avg_pool_3x3(np.ones((1, 4, 4, 1), np.float32))
  np.testing.assert_allclose(pooled, 1.0)


def test_load_params_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='convert_inception_weights'):
    inception.load_params(tmp_path / 'missing.npz')
  flat = _random_flat_params()
  flat['fc/bias'] = np.zeros(1000, np.float32)
  del flat['Conv2d_1a_3x3/conv/kernel']
  flat['extra/kernel'] = np.zeros(1)
  np.savez(tmp_path / 'bad.npz', **flat)
  pattern = r'missing.*Conv2d_1a_3x3.*unexpected.*extra.*wrong shape.*fc/bias'
  with pytest.raises(ValueError, match=pattern):
    inception.load_params(tmp_path / 'bad.npz')


def _to_torch_layout(flat):
  """Inverse of the converter's mapping, to fake a pytorch-fid state dict."""
  leaf_names = {v: k for k, v in convert_inception_weights._LEAF_NAMES.items()}
  state_dict = {}
  for name, value in flat.items():
    *scope, layer, leaf = name.split('/')
    torch_name = '.'.join(scope + list(leaf_names[layer, leaf]))
    if leaf == 'kernel':
      value = value.T if layer == 'fc' else value.transpose(3, 2, 0, 1)
    state_dict[torch_name] = value
  state_dict['Conv2d_1a_3x3.bn.num_batches_tracked'] = np.array(0)
  return state_dict


def test_converter_maps_torch_names_and_layouts():
  flat = _random_flat_params()
  state_dict = _to_torch_layout(flat)
  assert state_dict['Mixed_6b.branch7x7_2.conv.weight'].shape == (128, 128, 1, 7)
  assert 'Mixed_7c.branch3x3dbl_3b.bn.running_var' in state_dict
  converted = convert_inception_weights.convert_state_dict(state_dict)
  assert converted.keys() == flat.keys()
  for name in flat:
    np.testing.assert_array_equal(converted[name], flat[name])
  with pytest.raises(ValueError, match='AuxLogits'):
    convert_inception_weights.convert_state_dict({**state_dict, 'AuxLogits.fc.weight': 0})


def test_converter_command_writes_loadable_npz(tmp_path, monkeypatch):
  flat = _random_flat_params()
  tensors = {name: types.SimpleNamespace(numpy=lambda v=value: v)
             for name, value in _to_torch_layout(flat).items()}
  fake_torch = types.SimpleNamespace(load=lambda path, **kwargs: tensors)
  monkeypatch.setitem(sys.modules, 'torch', fake_torch)
  dst = tmp_path / 'inception_fid.npz'
  convert_inception_weights.main(['--src', 'unused.pth', '--dst', str(dst)])
  loaded = traverse_util.flatten_dict(inception.load_params(dst)['params'], sep='/')
  for name in flat:
    np.testing.assert_array_equal(loaded[name], flat[name])
