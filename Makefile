# Trailguard — the two commands: `make demo` and `make test`. Both install what they need.
SHELL := bash
export CARGO_TARGET_DIR ?= $(or $(TRAILGUARD_CACHE),$(HOME)/.cache/trailguard)/target

.PHONY: demo test build image env-up env-down schemas lint fmt bench fuzz clean-data

## make demo: the whole pipeline locally — alerts and remediations on screen.
demo:
	deploy/demo/run.sh

## make test: unit, integration and end-to-end tests against Apache Kafka (and tansu) and moto.
test:
	deploy/test.sh

## make bench: throughput numbers (release build, local broker).
bench:
	deploy/bench.sh

## make fuzz: cargo-fuzz on ingest's split → normalize (nightly; FUZZ_SECONDS, default 600).
fuzz:
	deploy/fuzz.sh

build:
	cargo build --workspace --bins

## make image: the container image (Dockerfile; needs a Docker engine), tagged with the version.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
image:
	@command -v docker >/dev/null || { echo "make image: docker is not installed" >&2; exit 1; }
	DOCKER_BUILDKIT=1 docker build -t trailguard:$(VERSION) -f Dockerfile .

## Start / stop the local broker and AWS server by hand.
env-up:
	deploy/local/up.sh

env-down:
	deploy/local/down.sh

## Regenerate the wire contract's JSON Schemas after changing the types.
schemas:
	cargo run -q -p trailguard-common --bin gen-schemas

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean-data:
	deploy/local/down.sh
	rm -rf .data
