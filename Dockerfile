# comfyui-gateway's container image: a small Debian runtime with the one binary, run as a
# non-root user, its database on the /data volume, configured by environment only
# (README "Configuration"; `docker run IMAGE serve --help` lists every setting).
#
#   docker build -t comfyui-gateway .
#   docker run -d -p 127.0.0.1:3000:3000 -v gateway-data:/data \
#     -e COMFYUI_URL=http://host.docker.internal:8188 comfyui-gateway
#
# or `docker compose up` (compose.yaml). Build arguments:
# - RUST_IMAGE, RUNTIME_IMAGE: the two base images (pin them by digest if you like);
# - FEATURES: cargo features of the build (default `s3`: STORAGE_PROVIDER=s3 works);
# - BINARY=prebuilt: take `comfyui-gateway` from the root of the build context instead of
#   compiling it (the project's container test does this, on a machine without a Rust
#   image; the runtime stage is the same).
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
ARG BINARY=build

FROM ${RUST_IMAGE} AS build
ARG FEATURES=s3
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY engine engine
COPY wit wit
COPY workflows workflows
COPY bench bench
COPY tests tests
RUN cargo build --release --locked --features "${FEATURES}" --bin comfyui-gateway \
 && install -m 0755 target/release/comfyui-gateway /comfyui-gateway

FROM scratch AS prebuilt
COPY comfyui-gateway /comfyui-gateway

FROM ${BINARY} AS binary

FROM ${RUNTIME_IMAGE} AS runtime
# CA certificates: HTTPS backends, webhooks, URL inputs and S3 verify against them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && useradd --user-group --uid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin gateway \
 && install -d -o gateway -g gateway -m 0700 /data
COPY --from=binary /comfyui-gateway /usr/local/bin/comfyui-gateway
USER gateway:gateway
WORKDIR /data
VOLUME ["/data"]
# Every interface inside the container: publish the port on the host's loopback
# (`-p 127.0.0.1:3000:3000`) or set API_KEYS before publishing it anywhere else.
ENV HOST=0.0.0.0 \
    PORT=3000 \
    DATABASE_URL=/data/gateway.redb \
    LOG_FORMAT=text
EXPOSE 3000
# Liveness only: a gateway whose ComfyUI is down is alive and keeps its queue (readiness
# is GET /readyz, for a load balancer).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["comfyui-gateway", "health", "--live", "--timeout-s", "4"]
ENTRYPOINT ["comfyui-gateway"]
CMD ["serve"]
