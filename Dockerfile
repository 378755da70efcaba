# hn-classifier: a static binary on an empty image (no shell, no package manager), run as non-root.
# Build: docker build -t hn-classifier .   Run: docker run -p 8000:8000 hn-classifier serve --simulate

FROM rust:1.95-slim-bookworm AS build
# musl for a fully static binary; the version is whatever bookworm ships, nothing to pin against.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src

# Dependency layer: the manifests and stub sources only, so editing src/ reuses this layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --locked --release --target x86_64-unknown-linux-musl \
 && rm -rf src

# The same release build CI runs (.ci/run: cargo build --locked --release), for the musl target.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --locked --release --target x86_64-unknown-linux-musl

FROM scratch
# TLS roots are compiled in (rustls with webpki-roots), so the empty image needs no CA bundle.
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/hn-classifier /hn-classifier
USER 65532:65532
ENV HNC_LISTEN=0.0.0.0:8000 \
    HNC_LOG_FORMAT=json
EXPOSE 8000
ENTRYPOINT ["/hn-classifier"]
CMD ["serve"]
