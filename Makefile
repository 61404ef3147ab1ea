# Every target delegates to `cargo xtask`, which holds the project's automation.
.PHONY: build test lint clean bench chaos ci nats python doc fmt

build:
	cargo xtask build
test:
	cargo xtask test
lint:
	cargo xtask lint
clean:
	cargo xtask clean
bench:
	cargo xtask bench
chaos:
	cargo xtask chaos
ci:
	cargo xtask ci
python:
	cargo xtask python
nats:
	cargo xtask nats
doc:
	cargo xtask doc
fmt:
	cargo xtask fmt
