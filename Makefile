# The README's commands. Every target creates the virtual environment first if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= model/artifacts/default
CONFIG ?= training/configs/default.toml
HOST ?= 127.0.0.1
PORT ?= 8000

# Pretrained inputs for training (training/pretrained.py): LAC's source distribution from PyPI
# (its character table; Apache-2.0) and bigram vectors trained with gensim on ../shared/data/text.
LAC_SDIST := runs/lac/LAC-2.1.2.tar.gz
BIGRAM_VECTORS := runs/pretrained/bigrams-48.kv

.PHONY: venv serve test train lac pretrain lm evaluate bench bench-gpu lint clean image image-test

venv: $(VENV)/.installed

# torch is installed alone first and pinned: an open range can pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[train,dev,bench,bulk]'
	touch $@

serve: venv
	NER_MODEL_PATH=$(MODEL) NER_HOST=$(HOST) NER_PORT=$(PORT) $(BIN)/ner-serve

test: venv
	$(BIN)/pytest -q

# The default model is trained in four stages, each config's init_from naming the bundle of the
# stage before: base.toml (runs/base), msra-resume-twice.toml (runs/msra-resume-twice),
# all-ner-twice.toml (runs/all-ner-twice), then default.toml. `make train` trains all four, one
# after the other.
FINE_TUNING_STAGES := base msra-resume-twice all-ner-twice

train: venv lac pretrain
ifeq ($(CONFIG),training/configs/default.toml)
	$(foreach stage,$(FINE_TUNING_STAGES),$(BIN)/python -m training.train --config training/configs/$(stage).toml --out runs/$(stage) &&) true
endif
	$(BIN)/python -m training.train --config $(CONFIG)

lac: $(LAC_SDIST)

# pip builds an sdist's metadata even for `download`; LAC's setup.py imports pkg_resources,
# which setuptools 81 dropped, so an older setuptools runs it, in a throwaway venv of its own.
$(LAC_SDIST):
	$(PYTHON) -m venv $(dir $@)venv
	$(dir $@)venv/bin/pip install -q 'setuptools<81' wheel
	$(dir $@)venv/bin/pip download -q --no-deps --no-build-isolation lac==2.1.2 -d $(dir $@)
	rm -rf $(dir $@)venv

pretrain: $(BIGRAM_VECTORS)

$(BIGRAM_VECTORS): | venv
	$(BIN)/python -m training.pretrained --out $@

# Optional (not in the default recipe; docs/ner-recipes.md, run Q): the encoder pretrained as
# forward and backward character language models, for a config's encoder_init.
LM_ENCODER := runs/pretrained/lm.pt
lm: $(LM_ENCODER)

$(LM_ENCODER): | lac pretrain
	$(BIN)/python -m training.lm --config $(CONFIG) --out $@ --minutes 30

evaluate: venv
	for corpus in msra-test cluener-test resume-test pd98-test; do \
		$(BIN)/python -m training.evaluate --model $(MODEL) --corpus $$corpus --json $(MODEL)/eval-$$corpus.json || exit 1; \
	done

bench: venv
	$(BIN)/python -m bench.throughput --model $(MODEL)
	$(BIN)/python -m bench.throughput --model $(MODEL) --precision int8 --out bench/results/inprocess-int8.json
	$(BIN)/python -m bench.http_load --model $(MODEL)
	$(BIN)/python -m bench.stages --model $(MODEL) --http
	$(BIN)/python -m bench.report

# On a machine with an NVIDIA GPU, a CUDA build of torch and wrk (the venv's CPU torch will not do).
bench-gpu: venv
	PYTHON=$(BIN)/python MODEL=$(MODEL) bash bench/gpu.sh

# The container image zh-tagger:cpu, with Docker or else Podman (deploy/container/image_test.sh;
# deploy/README.md). image-test builds it if needed, runs it and docker-compose.yml's app +
# prometheus, checks them and removes what it started.
image:
	bash deploy/container/image_test.sh build

image-test:
	bash deploy/container/image_test.sh test

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
