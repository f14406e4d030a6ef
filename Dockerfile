# Multi-stage build: compile with the Rust toolchain, run from a small Debian image as a
# non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin conversa

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/conversa conversa \
    && mkdir -p /var/lib/conversa && chown conversa /var/lib/conversa
COPY --from=build /src/target/release/conversa /usr/local/bin/conversa
USER conversa
ENV HOST=0.0.0.0 PORT=8000 DATA_DIR=/var/lib/conversa LOG_FORMAT=json
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["/usr/local/bin/conversa"]
