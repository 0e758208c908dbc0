# syntax=docker/dockerfile:1

# Warden's two images, built from the repository root:
#   docker build --target sidecar -t ghcr.io/warden-mesh/warden-proxy:0.1.0 .
#   docker build -t ghcr.io/warden-mesh/warden:0.1.0 .
# `sidecar`: the slim `warden-proxy` binary (`proxy` and `init` only), what the injector adds
# to pods. The last stage, the default: the full `warden` CLI for the control plane
# (`identity`, `controller`, `injector`, `cni`, `install`, ...).

# --- build -------------------------------------------------------------------------------
# The toolchain the list in proxy/symbol-order.txt and the profile in proxy/pgo were made
# with (the list's mangled names carry the compiler version, and the profile's format is
# LLVM's; another build still works, with more of its code resident and less optimized).
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# aws-lc-rs (the only crypto provider) builds with the image's C compiler; no cmake needed.
# The caches speed up rebuilds; the binary is copied out of the cached target/ in the same step.
# The sidecar is optimized with its profile and static (scripts/build-sidecar.sh: target/sidecar).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin warden \
 && scripts/build-sidecar.sh \
 && install -D -m 0755 target/release/warden /out/warden \
 && install -D -m 0755 target/sidecar/release/warden-proxy /out/warden-proxy

# --- runtime base --------------------------------------------------------------------------
# Same Debian release as the build stage, so the control plane's binary finds the glibc it was
# linked against (the sidecar's links its C library in statically: scripts/build-sidecar.sh).
FROM debian:bookworm-slim AS base

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="warden" \
      org.opencontainers.image.description="Warden: a zero-trust service-mesh sidecar for Kubernetes" \
      org.opencontainers.image.source="https://github.com/warden-mesh/warden" \
      org.opencontainers.image.url="https://github.com/warden-mesh/warden" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# iptables: `warden init` runs iptables-save/-restore and ip6tables-save/-restore; the package
# ships both the nft and the legacy variants. ca-certificates: public roots for anything that
# verifies a WebPKI server. Nothing else: no shell tools beyond the base image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 2626 warden \
 && useradd --system --uid 2626 --gid 2626 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin warden

# --- sidecar: warden-proxy ------------------------------------------------------------------
FROM base AS sidecar
LABEL org.opencontainers.image.title="warden-proxy" \
      org.opencontainers.image.description="Warden's sidecar: the per-pod proxy and its interception rules"
COPY --from=build /out/warden-proxy /usr/local/bin/warden-proxy
# The proxy's UID/GID (warden_core::contract::PROXY_UID/PROXY_GID): interception skips this UID.
# warden-init overrides it (runAsUser 0) to install the rules.
USER 2626:2626
ENTRYPOINT ["/usr/local/bin/warden-proxy"]

# --- control plane: warden (the default target) ------------------------------------------
FROM base AS control-plane
COPY --from=build /out/warden /usr/local/bin/warden
USER 2626:2626
ENTRYPOINT ["/usr/local/bin/warden"]
