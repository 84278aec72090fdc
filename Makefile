# memhp: the two commands of the README.  Both set themselves up
# idempotently on a fresh Debian/Ubuntu machine (root, or sudo available).
#
#   make demo   -- the main job: the seed hotplug session on the default guest
#   make test   -- the test suite (unit + real QEMU end-to-end under TCG/KVM)

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
MEMHP := $(VENV)/bin/memhp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOST_PKGS := qemu-system-x86 qemu-system-arm qemu-efi-aarch64 qemu-utils cpio zstd xz-utils kmod debian-archive-keyring python3-venv ca-certificates librsvg2-bin syslinux syslinux-common mtools dosfstools gcc make flex bison bc libelf-dev libssl-dev
PYTEST_ARGS ?= -n 2

.PHONY: demo test setup host-deps venv image lint clean soak

demo: setup
	$(MEMHP) run

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

setup: host-deps venv image

host-deps:
	@missing=""; for p in $(HOST_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	lists=$$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n1); \
	if [ -n "$$missing" ] || [ -z "$$lists" ]; then \
	  echo "memhp setup: apt-get update$${missing:+; installing$$missing}"; \
	  $(SUDO) apt-get update -qq; \
	fi; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

image: venv
	$(MEMHP) image build

lint: venv
	$(VENV)/bin/ruff check harness tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info

# The fault tests (tests marked `fault`) repeated SOAK times: flakiness shows here.
SOAK ?= 20
soak: setup
	$(VENV)/bin/pytest -n 2 -m fault --soak $(SOAK) -p no:cacheprovider tests/reliability
