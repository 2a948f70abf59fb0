# The rouse image: the dist-profile binary with Kubernetes support on a distroless base (glibc and
# CA certificates, no shell, no package manager), running as the distroless non-root user.
#
#   docker build -t rouse:0.1.0 .
#
# Build stage: the same toolchain as CI; dependencies are compiled in their own layer so that a
# source change rebuilds only rouse.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches benches
RUN mkdir -p src tests/it tests/k8s && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs && echo 'fn main() {}' > tests/k8s/main.rs \
    && cargo build --profile dist --locked --features kubernetes --bin rouse || true
COPY src src
COPY config config
RUN touch src/main.rs src/lib.rs && cargo build --profile dist --locked --features kubernetes --bin rouse \
    && strip -o /rouse target/dist/rouse

# Run stage: nothing but the binary and what it links against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /rouse /usr/local/bin/rouse
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/rouse"]
CMD ["gateway", "--config", "/etc/rouse/config.yaml"]
