# The two commands: `make demo` trains the embedded default (Fashion-MNIST, CPU, ~10 min);
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: demo test clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  $(VENV)/bin/python -m bigbigan_jax.demo --config=configs/fashion_mnist.py; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist && \
	  $(VENV)/bin/python -m bigbigan_jax.demo --config=configs/fashion_mnist.py; \
	else \
	  echo "No local Fashion-MNIST files and not root: using TFDS's own fashion_mnist download."; \
	  $(VENV)/bin/python -m bigbigan_jax.demo --config=configs/fashion_mnist.py \
	    --config.data.dataset=fashion_mnist; \
	fi

# The suite runs on up to 4 cores (pytest-xdist); the 20 slowest tests are listed at the end.
test: $(VENV)/.installed
	$(VENV)/bin/pytest -q -n auto --maxprocesses=4 --dist loadfile --no-loadscope-reorder --durations=20 tests

clean:
	rm -rf $(VENV) .jax_cache *.egg-info
