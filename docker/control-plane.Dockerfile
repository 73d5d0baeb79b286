# syntax=docker/dockerfile:1
# Image of `trellis-control-plane`: the control plane (certificate authority and discovery, gRPC
# over TLS on 15012, metrics on 15014). Build from the repository root (see README.md):
#
#   docker build -f docker/control-plane.Dockerfile -t ghcr.io/trellis-mesh/trellis-control-plane:0.1.0 .
#
# Multi-stage: the workspace is built in the Rust image; only the binary goes into distroless
# cc (glibc, libgcc, CA certificates; no shell, no package manager), run as distroless's
# `nonroot` user 65532, the UID the Helm chart runs it as.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The whole workspace (cargo loads every member even to build one), minus what
# control-plane.Dockerfile.dockerignore leaves out (target/, .git/, .cache/).
COPY . .
# Registry and target caches survive between builds. The binary is copied out of the target
# cache mount, which is not part of any layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p trellis-control-plane --bin trellis-control-plane \
 && install -D -m 0755 target/dist/trellis-control-plane /out/trellis-control-plane

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="trellis-control-plane" \
      org.opencontainers.image.description="Trellis service mesh: the control plane (certificate authority and discovery, gRPC over TLS on 15012, metrics on 15014)" \
      org.opencontainers.image.source="https://github.com/trellis-mesh/trellis" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/trellis-control-plane /usr/local/bin/trellis-control-plane
USER 65532:65532
EXPOSE 15012 15014
ENTRYPOINT ["/usr/local/bin/trellis-control-plane"]
