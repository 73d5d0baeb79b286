# syntax=docker/dockerfile:1
# Image of `trellis-proxy`: the sidecar (`trellis-proxy run`), its init step (`trellis-proxy
# init`, iptables) and `trellis-proxy wait`. Build from the repository root (see README.md):
#
#   docker build -f docker/proxy.Dockerfile -t ghcr.io/trellis-mesh/trellis-proxy:0.1.0 .
#
# Multi-stage. Unlike the other images the runtime is debian:bookworm-slim, not distroless,
# because `init` runs iptables-restore/ip6tables-restore. It runs as the proxy's UID/GID 1337
# (docs/design.md: the interception rules leave that UID's traffic alone); the injector runs the
# sidecar as 1337 and the init container as root with only NET_ADMIN and NET_RAW.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The whole workspace minus what proxy.Dockerfile.dockerignore leaves out.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p trellis-proxy --bin trellis-proxy \
 && install -D -m 0755 target/dist/trellis-proxy /out/trellis-proxy

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="trellis-proxy" \
      org.opencontainers.image.description="Trellis service mesh: the sidecar proxy and its iptables init step" \
      org.opencontainers.image.source="https://github.com/trellis-mesh/trellis" \
      org.opencontainers.image.licenses="Apache-2.0"
# iptables brings iptables-nft (Debian's default, the one on PATH as `iptables`) and
# iptables-legacy with their -save/-restore companions, and ip6tables.
# /run/xtables.lock is made here because the init container's root file system is read-only:
# the legacy backend opens that lock file (O_CREAT, read-only access), which succeeds on a
# read-only file system only if the file already exists.
# Not version-pinned (hadolint DL3008): bookworm's iptables only gets security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/* /var/log/apt /var/log/dpkg.log \
 && install -m 0600 /dev/null /run/xtables.lock \
 && groupadd --system --gid 1337 trellis-proxy \
 && useradd --system --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin trellis-proxy
COPY --from=build /out/trellis-proxy /usr/local/bin/trellis-proxy
USER 1337:1337
# tunnel (mTLS), health and metrics on the pod IP; 15001/15006 are iptables targets and 15000
# listens on loopback only.
EXPOSE 15008 15020
ENTRYPOINT ["/usr/local/bin/trellis-proxy"]
CMD ["run"]
