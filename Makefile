# kerascope developer commands. `make demo` and `make test` work on a fresh clone (no network
# beyond the package registry): they create .venv, install, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
PHOTOS := chelsea.png coffee.png astronaut.png rocket.jpg
# pytest-xdist workers: one more than the cores. Many tests wait on subprocesses, servers and
# Ray, so with one worker per core the cores stood idle ~13 % of the time; on 2 cores the JAX
# suite took 14 min 19 s with 2 workers, 13 min 11 s with 3 (same clone, one after the other).
WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
# Some machines set PYTHONDONTWRITEBYTECODE: then every pytest process (each xdist worker, the
# torch run) re-rewrites the assertions of all ~90 test modules (about 5 s of CPU each) and every
# subprocess a test starts recompiles kerascope's sources. The caches go to ignored __pycache__/.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast lint bench install install-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -U pip
	$(PIP) -e '.[demo]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	# torch==2.13.0 is the CPU wheel on this machine type; pinning it keeps pip from pulling CUDA.
	$(PIP) -e '.[demo,serve,ray,test]'
	# The serve page's browser test drives Debian's Chromium through its own driver, so
	# Selenium never downloads a browser or a driver.
	test -x /usr/bin/chromedriver || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; }
	# A CJK font (WenQuanYi Zen Hei, ~10 MB): tests/test_fonts.py checks that class names such as
	# 猫 and 狗 are drawn with their own glyphs in pictures and plots, not as the same box.
	test -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y fonts-wqy-zenhei; }
	# WordNet 3.0 (Debian's wordnet-base): the test that re-derives the bundled ImageNet hierarchy
	# with scripts/make_imagenet_hierarchy.py reads it; kerascope itself never does.
	test -f /usr/share/wordnet/data.noun || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wordnet-base; }
	# timm is only read for its ImageNet synset files (an independent class-index source);
	# its torchvision dependency does not import beside torch 2.13, so it is installed bare.
	$(PIP) --no-deps timm==1.0.31
	# OpenVINO, the second CPU engine (59 MB wheel, 180 MB installed), also installed bare:
	# its openvino-telemetry dependency sends a usage event on import (kerascope.engines
	# blocks that import too); its other dependency, numpy, is already here.
	$(PIP) --no-deps 'openvino>=2025.0'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	@data=$$($(PY) -c 'import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / "data")'); \
	$(VENV)/bin/kerascope classify $(addprefix $$data/,$(PHOTOS)) --top 3

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests benchmarks examples
	KERAS_BACKEND=jax $(PY) -m pytest -q -n $(WORKERS) --dist loadfile
	KERAS_BACKEND=torch $(PY) -m pytest -q -m backends

test-fast: $(VENV)/.installed-test
	KERAS_BACKEND=jax $(PY) -m pytest -q -n $(WORKERS) --dist loadfile -m "not slow"

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: $(VENV)/.installed-test
	$(PY) benchmarks/classify_cpu.py

clean:
	rm -rf $(VENV) build *.egg-info
