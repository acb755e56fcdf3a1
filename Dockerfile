# GreenScale's image: one static-enough binary on a distroless base, running as non-root.
#   docker build -t greenscale .
#   docker run --rm greenscale --help

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p greenscale \
    && strip target/release/greenscale

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/greenscale /usr/local/bin/greenscale
USER 65532:65532
# gateway / up: 8080; scaler: gRPC 9090, metrics 8081
EXPOSE 8080 8081 9090
# greenscale is PID 1 here and reaps orphaned processes itself (no separate init needed).
ENTRYPOINT ["/usr/local/bin/greenscale"]
CMD ["--help"]
