# hn-classifier: one static binary on an empty image (no shell, no package manager), run as non-root.
# Build: docker build -t hn-classifier .   Run: docker run -p 8000:8000 hn-classifier serve --simulate
#
# The builder is any image with a Rust toolchain (cargo on PATH, CARGO_HOME set), gcc and the
# static glibc (libc6-dev). CI has no registry, so scripts/image-check.sh assembles one from
# Debian's packages and the host's toolchain and passes it as BUILDER; what CI builds is what ships.
ARG BUILDER=rust:1.95-slim-bookworm

FROM ${BUILDER} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY assets ./assets
COPY benches ./benches
# Statically linked glibc rather than musl: the musl standard library cannot be installed where
# there is no rustup download (CI here), and the same link must work everywhere. A static glibc
# cannot load NSS modules, so the binary resolves names with hickory's resolver (the upstream
# connector's and reqwest's; it reads /etc/resolv.conf and /etc/hosts) and never calls getaddrinfo.
# The cache mounts keep crates and compiled dependencies between builds (the dependency layer
# of a classic Dockerfile, without stub sources); the binary is copied out of the cached target.
RUN --mount=type=cache,id=hnc-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=hnc-target,target=/src/target \
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --locked --release --target x86_64-unknown-linux-gnu \
 && cp target/x86_64-unknown-linux-gnu/release/hn-classifier /hn-classifier

FROM scratch
# TLS roots are compiled in (rustls with webpki-roots), so the empty image needs no CA bundle.
COPY --from=build /hn-classifier /hn-classifier
USER 65532:65532
ENV HNC_LISTEN=0.0.0.0:8000 \
    HNC_LOG_FORMAT=json
EXPOSE 8000
ENTRYPOINT ["/hn-classifier"]
CMD ["serve"]
