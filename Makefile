# tiketi — the two commands: `make test` (everything CI checks) and `make demo` (the on-sale rehearsal).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint unit crds-check stack-test demo bench crds stack-up stack-down

test:
	e2e/test-all

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --lib --bins --locked

crds:
	$(CARGO) run -q -p tiketi-operator --locked -- crd > crds/ticketingevents.tiketi.gg.yaml

crds-check:
	e2e/check-crds

stack-up:
	e2e/stack up

stack-down:
	e2e/stack down

demo:
	e2e/demo

bench:
	e2e/bench/all
