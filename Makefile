# Set-up and everyday commands. Everything runs inside .venv (created on first use).
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
OUT     ?= out

.PHONY: setup demo test test-fast bench clean syslibs

setup: $(STAMP)

# open3d needs libusb-1.0 at import time; install it when we can, else say how.
syslibs:
	@if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libusb-1.0-0 (needed by open3d)"; \
	    (apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || (apt-get update -qq >/dev/null && apt-get install -y -qq libusb-1.0-0 >/dev/null)); \
	  else \
	    echo "open3d needs libusb-1.0: run 'sudo apt-get install -y libusb-1.0-0' and retry"; exit 1; \
	  fi; \
	fi

$(STAMP): requirements.txt setup.py | syslibs
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: setup
	$(VPY) -m voxmap_ros.cli demo --out $(OUT)/demo

test: setup
	$(VPY) -m pytest -q test

test-fast: setup
	$(VPY) -m pytest -q -x test -k "not slow"

clean:
	rm -rf $(OUT) .pytest_cache build *.egg-info
