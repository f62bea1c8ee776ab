# syntax=docker/dockerfile:1
# One image for every role: `recsys scheduler`, `recsys executor`, `recsys pipeline`, …

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin recsys && cp target/release/recsys /usr/local/bin/recsys

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/recsys /usr/local/bin/recsys
RUN useradd --system --create-home recsys && mkdir -p /work && chown recsys /work
USER recsys
WORKDIR /home/recsys
ENTRYPOINT ["recsys"]
CMD ["--help"]
