# syntax=docker/dockerfile:1
# Image of `trellis`: the trellis command (demo, inspect, check, svid fetch). Build from the
# repository root (see README.md):
#
#   docker build -f docker/cli.Dockerfile -t ghcr.io/trellis-mesh/trellis:0.1.0 .
#
# Multi-stage: the workspace is built in the Rust image; only the binary goes into distroless
# cc (glibc, libgcc, CA certificates; no shell, no package manager), run as distroless's
# `nonroot` user 65532, the UID the Helm chart runs it as.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The whole workspace (cargo loads every member even to build one), minus what
# cli.Dockerfile.dockerignore leaves out (target/, .git/, .cache/).
COPY . .
# Registry and target caches survive between builds. The binary is copied out of the target
# cache mount, which is not part of any layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p trellis --bin trellis \
 && install -D -m 0755 target/dist/trellis /out/trellis

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="trellis" \
      org.opencontainers.image.description="Trellis service mesh: the trellis command (demo, inspect, check, svid fetch)" \
      org.opencontainers.image.source="https://github.com/trellis-mesh/trellis" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/trellis /usr/local/bin/trellis
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/trellis"]
