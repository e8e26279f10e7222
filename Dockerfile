# syntax=docker/dockerfile:1
# stega events: one image holding every binary (returns-api, returns-worker, correlations-api,
# correlations-worker, boundary, stega). compose.yaml starts each service from it with its own
# command. Both base images are build arguments, so a machine that reaches no registry can build
# from images made locally (scripts/compose-smoke.sh does that with debootstrap).
ARG BUILDER_IMAGE=swift:6.3-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# (podman: build with --format docker, or SHELL below is ignored.)
# ---- build: release binaries and the Swift runtime libraries they load ------------------------
# Linked against the Swift runtime dynamically: six binaries share one copy of it (about 80 MB,
# most of it ICU data) instead of carrying it six times (a static binary is about 65 MB).
FROM ${BUILDER_IMAGE} AS build
# Debian's versions within bookworm are what the runtime stage installs too: not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      librabbitmq-dev libmicrohttpd-dev libsqlite3-dev libcurl4-openssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The manifest first: resolving packages is its own layer, reused while only Sources change.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
# SHELL with pipefail: the library list below is a pipe. '$ORIGIN/../lib' is meant literally.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=SC2016
RUN products=(returns-api returns-worker correlations-api correlations-worker boundary stega) \
 && swift build -c release -Xlinker -rpath -Xlinker '$ORIGIN/../lib' \
 && bin="$(swift build -c release --show-bin-path)" \
 && toolchain="$(dirname "$(dirname "$(readlink -f "$(command -v swift)")")")" \
 && mkdir -p /out/bin /out/lib \
 && for product in "${products[@]}"; do cp "$bin/$product" /out/bin/ && strip /out/bin/"$product"; done \
 && cp -R "$bin"/*.resources /out/bin/ \
 && ldd "${products[@]/#//out/bin/}" | awk -v dir="$toolchain/lib/swift/linux/" 'index($3, dir) == 1 { print $3 }' \
      | sort -u | xargs -I{} cp {} /out/lib/ \
 && cp "$toolchain/libexec/swift/linux/swift-backtrace-static" /out/bin/swift-backtrace \
 && ls -la /out/bin /out/lib

# ---- runtime: slim Debian with the C libraries only, a non-root user ---------------------------
FROM ${RUNTIME_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      librabbitmq4 libmicrohttpd12 libsqlite3-0 libcurl4 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 stega \
 && useradd --system --uid 10001 --gid stega --home-dir /var/lib/stega --shell /usr/sbin/nologin stega \
 && mkdir -p /var/lib/stega \
 && chown stega:stega /var/lib/stega
# The binaries find the Swift runtime in ../lib (their rpath) and their resources (openapi.json)
# in the *.resources bundles beside them; a crash prints a backtrace (swift-backtrace).
COPY --from=build /out/ /opt/stega/
ENV PATH=/opt/stega/bin:$PATH \
    SWIFT_BACKTRACE=enable=yes,sanitize=yes,threads=all,images=all,interactive=no,swift-backtrace=/opt/stega/bin/swift-backtrace \
    STEGA_DATA_DIR=/var/lib/stega \
    STEGA_LOG_FORMAT=json
WORKDIR /var/lib/stega
USER 10001:10001
EXPOSE 8080 8081 8082 9081 9082
CMD ["stega", "--help"]
