# pushgate in a container: a multi-stage build (the Rust toolchain only in the
# build stage), a small Debian runtime, a non-root user, the data directory
# on a volume, and a health check on /healthz.
#
#   docker build -t pushgate .
#   docker run -p 7700:7700 -p 7701:7701 -p 7702:7702/udp -p 7780:7780 \
#       -v pushgate-data:/data --ulimit nofile=1048576:1048576 pushgate
#
# The same image runs every cluster role (`pushgate room`, `center`, ...):
# see deploy/compose.yaml.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pushgate \
 && strip target/release/pushgate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin pushgate \
 && mkdir /data && chown pushgate /data
COPY --from=build /src/target/release/pushgate /usr/local/bin/pushgate
USER pushgate
WORKDIR /data
VOLUME /data
ENV PUSHGATE_DATA=/data \
    PUSHGATE_WS=0.0.0.0:7700 \
    PUSHGATE_TCP=0.0.0.0:7701 \
    PUSHGATE_QUIC=0.0.0.0:7702 \
    PUSHGATE_HTTP=0.0.0.0:7780
EXPOSE 7700 7701 7702/udp 7780
# No curl in the slim image: bash's /dev/tcp asks /healthz on the HTTP
# listener of whatever role runs (PUSHGATE_HTTP).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "port=${PUSHGATE_HTTP##*:}; exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["pushgate"]
