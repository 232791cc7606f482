# The two commands of the README. Each creates .venv when it is missing and installs the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first: a range that the local wheels (or a user's CUDA build) satisfy
	$(BIN)/pip install "torch>=2.4" "torchvision>=0.19"
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stargan-ray demo

# tools/install_browser.sh: chromium and chromium-driver for the browser test (apt-get, as root)
test: $(STAMP)
	sh tools/install_browser.sh
	$(BIN)/python -m pytest -q --durations=25 tests

clean:
	rm -rf $(VENV) .pytest_cache
