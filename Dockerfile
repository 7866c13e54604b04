# dr-syncer container image: a static (musl) binary on distroless, running as non-root.
#   docker build -t dr-syncer .
# Without Docker, `make image` builds the same image from scratch (binary path, user,
# entrypoint, command; CA certificates and the nonroot user in /etc) as an OCI archive,
# reproducibly; scripts/image-test.sh checks that both describe the same image.
# The build stage runs scripts/build-static.sh, the same script CI runs to prove the static
# binary links; libgit2 and OpenSSL are compiled from source (`--features vendored`).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools file \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY templates ./templates
COPY tests/testkit ./tests/testkit
COPY benches ./benches
COPY scripts/build-static.sh ./scripts/build-static.sh
RUN scripts/build-static.sh > /tmp/binary-path && cp "$(cat /tmp/binary-path)" /dr-syncer

# distroless/static: CA certificates and /etc/passwd with the nonroot user, nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /dr-syncer /usr/local/bin/dr-syncer
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/dr-syncer"]
CMD ["controller"]
