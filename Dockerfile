# One image holding the four Herald services; pick one with the command,
# e.g. `docker run herald herald-gateway` (see docker-compose.yml).

# ---- build -------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# Use sqlx's offline query data, if any, instead of a live database.
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY . .
# sql/ migrations are embedded into the binaries at compile time.
RUN cargo build --release --locked --bins \
 && mkdir -p /out \
 && for s in gateway auth history presence; do \
      cp "target/release/herald-$s" /out/ \
      && objcopy --strip-debug "/out/herald-$s"; \
    done

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin herald
COPY --from=builder /out/ /usr/local/bin/
USER herald:herald
# Listen on every interface inside the container; ports are set per service.
ENV HERALD_HOST=0.0.0.0
EXPOSE 6001 6002 6003 6004
CMD ["herald-gateway"]
