# tlsgw — `make demo` and `make test` are all the set-up a fresh Debian machine with python3 needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install demo test lint bench soak docs clean

install: $(BIN)/tlsgw

# Debian's python3 lacks ensurepip until python3-venv is installed; as root we install it.
$(BIN)/tlsgw: pyproject.toml
	@if ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing python3-venv (needed to create $(VENV))"; \
	    apt-get install -y -qq python3-venv >/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv; }; \
	    $(PYTHON) -m venv $(VENV); \
	  else \
	    echo "make: cannot create $(VENV); run: sudo apt-get install -y python3-venv" >&2; exit 1; \
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

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest

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
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
