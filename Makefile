# The front door. `make run` starts the whole thing on embedded defaults; `make test` is what
# CI runs (.ci/run). Every target is plain commands a person can read and run by hand.

CARGO ?= cargo
BIN := target/release/switchboard

.PHONY: run test test-rust lint bench fuzz chaos install release services

release:
	$(CARGO) build --release --workspace

run: release
	scripts/run.sh

services:
	scripts/services.sh rabbitmq postgres php prometheus systemd-analyze

test: services lint
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --no-fail-fast
	clients/test.sh
	tests/e2e/run.sh
	scripts/autobahn.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: release
	scripts/bench.sh

fuzz:
	scripts/fuzz.sh $(or $(SECONDS),30)

# The long chaos run (tests/chaos.rs `chaos_full`): restarts the shared RabbitMQ and
# PostgreSQL, so run it alone. The bounded subset (`chaos_bounded`) is part of `make test`.
chaos: services
	$(CARGO) test --release --test chaos -- --ignored --nocapture chaos_full

install: release
	scripts/install.sh
