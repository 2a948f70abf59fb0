# The rouse image: the dist-profile binary with Kubernetes support, built profile-guided, on a
# distroless base (glibc and CA certificates, no shell, no package manager), running as the
# distroless non-root user.
#
#   docker build -t rouse:0.1.0 .                    # profile-guided (scripts/pgo.sh)
#   docker build --build-arg PGO=0 -t rouse:0.1.0 .  # the plain dist build, minutes sooner
#
# The profile-guided build is the one docs/benchmarks.md measures ahead: about 15 % fewer
# instructions per request and less code touched per request than the plain one. The build
# stage runs it: the dist profile built instrumented, a short training load on loopback (nginx
# as the backend, h2load as the client, about 15 seconds), and the dist profile built again
# with the profile written. On 2 cores that is about 9 minutes after the dependency layer.
#
# Build stage: the same toolchain as CI; dependencies are compiled in their own layer so that a
# source change rebuilds only rouse (the instrumented build's; the final build's dependencies
# follow the profile, which changes with the source, and are compiled again).
FROM rust:1.95-bookworm AS build
ARG PGO=1
# The training's backend and client, and llvm-profdata, only for the profile-guided build.
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang \
    && if [ "$PGO" != 0 ]; then \
         apt-get install -y --no-install-recommends nginx nghttp2-client openssl \
         && rustup component add llvm-tools; fi \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY scripts/pgo.sh scripts/pgo.sh
RUN mkdir -p src config tests/it tests/k8s && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs && echo 'fn main() {}' > tests/k8s/main.rs \
    && if [ "$PGO" != 0 ]; then PGO_STEP=instrumented PGO_FEATURES=kubernetes scripts/pgo.sh; \
       else cargo build --profile dist --locked --features kubernetes --bin rouse; fi || true
COPY src src
COPY config config
RUN touch src/main.rs src/lib.rs \
    && if [ "$PGO" != 0 ]; then BIN=$(PGO_FEATURES=kubernetes scripts/pgo.sh); \
       else cargo build --profile dist --locked --features kubernetes --bin rouse \
         && BIN=target/dist/rouse; fi \
    && strip -o /rouse "$BIN"

# Run stage: nothing but the binary and what it links against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /rouse /usr/local/bin/rouse
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/rouse"]
CMD ["gateway", "--config", "/etc/rouse/config.yaml"]
