# qcd: two commands on a fresh machine.
#   make demo   set up, start the daemon on its embedded defaults, push a demo study, show it
#   make test   set up and run the whole test suite (unit + integration, CPU only)
PY      ?= python3
VENV    ?= .venv
PIP     := $(VENV)/bin/pip
APT_PKGS := dcmtk orthanc orthanc-dicomweb chromium

.PHONY: demo test setup system-deps bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	touch $@

setup: system-deps $(VENV)/.installed

system-deps:
	@missing=""; for t in storescu Orthanc chromium; do command -v $$t >/dev/null || missing=1; done; \
	[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(APT_PKGS) (dcmtk plays the scanner, Orthanc the PACS, Chromium the dashboard user)"; \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi

demo: setup
	VENV=$(VENV) bash scripts/demo.sh

test: setup
	$(VENV)/bin/pytest -m "not gpu" --durations=15

bench: setup
	$(VENV)/bin/python tests/bench/bench_ingest.py --out docs/BENCHMARKS.md

clean:
	rm -rf $(VENV) var demo .pytest_cache
