# Multi-stage build: dependencies compiled once and cached (cargo-chef), the service built
# stripped, then run from a small Debian image as a non-root user.
#   docker build --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t conversa .
# (`.git` is not in the build context: GIT_COMMIT is what `/version` reports.)
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.71
WORKDIR /src

FROM chef AS plan
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
COPY --from=plan /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin conversa
COPY . .
ARG GIT_COMMIT=unknown
ENV GIT_COMMIT=${GIT_COMMIT}
RUN cargo build --release --locked --bin conversa

FROM debian:12.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/conversa conversa \
    && mkdir -p /var/lib/conversa && chown conversa /var/lib/conversa
COPY --from=build /src/target/release/conversa /usr/local/bin/conversa
USER conversa
ENV HOST=0.0.0.0 PORT=8000 DATA_DIR=/var/lib/conversa LOG_FORMAT=json
VOLUME /var/lib/conversa
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["/usr/local/bin/conversa"]
