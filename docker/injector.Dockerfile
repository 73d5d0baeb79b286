# syntax=docker/dockerfile:1
# Image of `trellis-injector`: the sidecar injector (mutating admission webhook, HTTPS on 15017).
# Build from the repository root (see README.md):
#
#   docker build -f docker/injector.Dockerfile -t ghcr.io/trellis-mesh/trellis-injector:0.1.0 .
#
# Multi-stage: the workspace is built in the Rust image; only the binary goes into distroless
# cc (glibc, libgcc, CA certificates; no shell, no package manager), run as distroless's
# `nonroot` user 65532, the UID the Helm chart runs it as.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The whole workspace (cargo loads every member even to build one), minus what
# injector.Dockerfile.dockerignore leaves out (target/, .git/, .cache/).
COPY . .
# Registry and target caches survive between builds. The binary is copied out of the target
# cache mount, which is not part of any layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p trellis-injector --bin trellis-injector \
 && install -D -m 0755 target/dist/trellis-injector /out/trellis-injector

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="trellis-injector" \
      org.opencontainers.image.description="Trellis service mesh: the sidecar injector (mutating admission webhook, HTTPS on 15017)" \
      org.opencontainers.image.source="https://github.com/trellis-mesh/trellis" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/trellis-injector /usr/local/bin/trellis-injector
USER 65532:65532
EXPOSE 15017
ENTRYPOINT ["/usr/local/bin/trellis-injector"]
