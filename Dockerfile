# Trailguard: one image, three binaries (ingest, detect, remediate). Choose one with the
# container's command, e.g. `detect`, `remediate`, `ingest sqs`.
#
#   make image                      # docker build -t trailguard:<version> .
#
# Built from this repository alone. No secrets are baked in: the alert-signing key, webhook
# URLs and AWS credentials come from the environment at run time (see README "Running in
# production").

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# librdkafka is compiled from source by rdkafka-sys (OpenSSL for TLS and SASL, zstd, zlib).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY common common
COPY ingest ingest
COPY detect detect
COPY remediate remediate
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p trailguard-ingest -p trailguard-detect -p trailguard-remediate \
 && mkdir -p /out \
 && cp target/release/ingest target/release/detect target/release/remediate /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 trailguard \
 && useradd --system --uid 10001 --gid trailguard --home-dir /var/lib/trailguard --create-home trailguard
COPY --from=build /out/ /usr/local/bin/
# Admin endpoints (/metrics, /healthz): ingest 9101, detect 9102, remediate 9103.
EXPOSE 9101 9102 9103
USER 10001:10001
WORKDIR /var/lib/trailguard
# No default service: the command names it (`detect`, `remediate`, `ingest sqs`, ...).
ENTRYPOINT []
CMD ["detect", "--help"]
