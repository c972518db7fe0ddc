# Two set-up commands (README): `make demo` and `make test`. Both create .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint venv clean-venv browser

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch 2.14.1 + torchvision 0.29.1 are the pair that imports together here (open_clip needs
# torchvision); pip takes both from the local mirror. About 6 GB, about 2 minutes.
# The ray extra (plain `ray`, about 10 s and 250 MB here) lets tests/test_ray.py start a local Ray.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

# Headless Chromium renders the HTML report in tests/test_report.py (Debian package, about
# 1 minute and 600 MB). Installed only when missing and running as root; otherwise that test skips.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	      || echo "note: apt-get could not install chromium; the report render test will skip"; \
	  else echo "note: chromium missing and not root; the report render test will skip"; fi; \
	fi

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffloc demo --out results/demo

# Import order and pyflakes over the whole tree ([tool.ruff] in pyproject.toml); `ruff check --fix` sorts imports.
lint: $(STAMP)
	$(BIN)/ruff check .

# Every test, the slow ones included (`pytest -m "not slow"` leaves those out while editing).
test: lint browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
