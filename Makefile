# tlsgw — `make demo` and `make test` are all the set-up a fresh Debian machine with python3 needs.
PYTHON ?= python3
# The default python3 gets .venv (as the README shows); any other interpreter, e.g.
# `make test PYTHON=python3.13`, gets its own .venv-X.Y. .ci/find-python also resolves a pyenv
# shim whose version is installed but not selected.
PY     := $(shell .ci/find-python $(PYTHON))
PYVER  := $(if $(PY),$(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null))
VENV   := $(if $(filter python3,$(PYTHON)),.venv,.venv-$(PYVER))
BIN    := $(VENV)/bin

.PHONY: install demo test lint bench soak docs clean

install: $(BIN)/tlsgw

# Debian's python3.X lacks ensurepip until python3.X-venv is installed; as root we install it.
$(BIN)/tlsgw: pyproject.toml
	@[ -n "$(PYVER)" ] || { echo "make: cannot run $(PYTHON)" >&2; exit 1; }
	@if ! $(PY) -m venv $(VENV) >/dev/null 2>&1; then \
	  rm -rf $(VENV); pkg=python$(PYVER)-venv; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing $$pkg (needed to create $(VENV))"; \
	    apt-get install -y -qq $$pkg >/dev/null || { apt-get update -qq && apt-get install -y -qq $$pkg; }; \
	    $(PY) -m venv $(VENV); \
	  else \
	    echo "make: cannot create $(VENV); run: sudo apt-get install -y $$pkg" >&2; exit 1; \
	  fi; \
	fi
	$(BIN)/pip install -q --disable-pip-version-check -e .
	@touch $@

$(VENV)/.test-deps: $(BIN)/tlsgw
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# Demo: lab certificates (once), three greeting/echo backends and a gateway in front of them,
# plaintext on :9000 and TLS on :9443 (Ctrl-C stops everything).
demo: install
	@[ -f certs/server.pem ] || $(BIN)/tlsgw gencert --dir certs --quiet
	@$(BIN)/tlsgw lab backends 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003 & lab=$$!; \
	trap 'kill $$lab 2>/dev/null' EXIT INT TERM; sleep 0.5; \
	echo; echo "tlsgw demo: gateway on 127.0.0.1:9000 (plain) and 127.0.0.1:9443 (TLS) in front of 3 backends (configs/demo.yaml)"; \
	echo "  connect:          python3 -c 'import socket; s=socket.create_connection((\"127.0.0.1\",9000)); print(s.recv(100).decode())'"; \
	echo "  see stickiness:   $(BIN)/tlsgw lab probe 127.0.0.1:9000 --clients 8 --repeat 2"; \
	echo "                    (each client address 127.0.0.N always reaches the same backend)"; \
	echo "  TLS:              $(BIN)/tlsgw lab probe 127.0.0.1:9443 --tls --cafile certs/ca.pem"; \
	echo "                    openssl s_client -connect 127.0.0.1:9443 -CAfile certs/ca.pem -servername localhost"; \
	echo "  stop:             Ctrl-C"; echo; \
	$(BIN)/tlsgw serve -c configs/demo.yaml

# pytest's exit status 5 (no tests collected) is a failure too, with its reason
# Two pytest workers (the suite's files are spread over them, a file's tests stay together so
# its module-scoped gateways are shared): on 2 cores this halves the wall time.
test: $(VENV)/.test-deps
	@$(BIN)/python -m pytest -n 2 --dist loadfile; rc=$$?; \
	  if [ $$rc = 5 ]; then echo "make: pytest collected no tests" >&2; fi; exit $$rc

lint: $(VENV)/.test-deps
	$(BIN)/ruff check tlsgw tests

bench: install
	$(BIN)/python tests/bench/run.py

# Soak: checksummed sessions and idle connections through one gateway; writes docs/reliability.md.
# A shorter run: make soak SOAK_ARGS="--sessions 20000 --idle 2000" (tests/soak/run.py --help).
soak: install
	$(BIN)/python tests/soak/run.py $(SOAK_ARGS)

docs: install
	$(BIN)/python -m tlsgw.config.docs > docs/config-reference.md

clean:
	rm -rf .venv .venv-* build *.egg-info .pytest_cache .ruff_cache
