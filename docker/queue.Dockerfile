# syntax=docker/dockerfile:1.7
# tiketi-queue: Waiting-room (queue) service.
#
# Build context is the repository root (the workspace needs every member's manifest):
#   docker buildx build -f docker/queue.Dockerfile -t <registry>/tiketi/queue:<version> .
# docker/queue.Dockerfile.dockerignore keeps target/, .git and the deploy files out of the context.
# See docker/build-push.sh for the ECR flow.

ARG RUST_VERSION=1.95

# === build ===
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds (BuildKit); the binary is copied out of
# the cached target/ because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p tiketi-queue --bin tiketi-queue \
 && install -D -m 0755 target/release/tiketi-queue /out/tiketi-queue

# === runtime ===
# distroless/cc: glibc + libgcc, no shell, no package manager; the :nonroot tag runs as uid 65532.
# TLS (rediss://, Aurora sslmode, the Kubernetes API) is rustls with compiled-in webpki roots, so the
# image needs no OpenSSL.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tiketi-queue" \
      org.opencontainers.image.description="Waiting-room (queue) service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/tiketi-queue /usr/local/bin/tiketi-queue
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tiketi-queue"]
