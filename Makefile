# Set-up and everyday commands. Everything runs inside .venv (created on first use).
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
OUT     ?= out

.PHONY: setup demo test test-fast clean syslibs torch-cpu

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

# With ROS 2 sourced (ROS_DISTRO set) the venv sees the system rclpy and the PyPI ROS wheels are
# never installed; without ROS, requirements-ros.txt brings rclpy and the message packages.
$(STAMP): requirements.txt requirements-ros.txt setup.py | syslibs
	@if [ -n "$$ROS_DISTRO" ]; then \
	  test -x $(VPY) || $(PY) -m venv --system-site-packages $(VENV); \
	else \
	  test -x $(VPY) || $(PY) -m venv $(VENV); \
	fi
	$(VPY) -m pip install -q --upgrade pip
	@$(MAKE) --no-print-directory torch-cpu
	$(VPY) -m pip install -q -r requirements.txt
	@if [ -z "$$ROS_DISTRO" ]; then $(VPY) -m pip install -q -r requirements-ros.txt; \
	  else echo "ROS_DISTRO=$$ROS_DISTRO: using the system rclpy"; fi
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The CPU build of torch: where the configured indexes offer a CUDA build of $(TORCH_PIN) (plain
# PyPI on Linux), take it from PyTorch's CPU index instead of downloading gigabytes of CUDA; when
# pip cannot tell (no answer from the dry run), install as the requirements say.
TORCH_PIN       := $(shell grep -E '^torch==' requirements.txt)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
torch-cpu:
	@url=$$($(VPY) -m pip install --dry-run --no-deps --ignore-installed -q --report - "$(TORCH_PIN)" 2>/dev/null \
	  | $(VPY) -c "import json, sys; print(json.load(sys.stdin)['install'][0]['download_info']['url'])" 2>/dev/null); \
	case "$$url" in \
	  ""|*%2Bcpu*|*+cpu*) $(VPY) -m pip install -q "$(TORCH_PIN)" ;; \
	  *) echo "$(TORCH_PIN): the configured indexes offer '$$url', not a CPU build; installing from $(TORCH_CPU_INDEX)"; \
	     $(VPY) -m pip install -q "$(TORCH_PIN)" --index-url $(TORCH_CPU_INDEX) ;; \
	esac

demo: setup
	$(VPY) -m voxmap_ros.cli demo --out $(OUT)/demo

test: setup
	$(VPY) -m pytest -q test

test-fast: setup
	$(VPY) -m pytest -q -x test -k "not slow"

clean:
	rm -rf $(OUT) .pytest_cache build *.egg-info
