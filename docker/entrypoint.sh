#!/usr/bin/env bash
# Starts PostgreSQL 15 with m3ret: initialises $PGDATA on first run (trust
# authentication inside the container network; set a password and pg_hba.conf
# before exposing it anywhere real), then runs the postmaster in the foreground.
set -euo pipefail
BIN=/usr/lib/postgresql/15/bin
mkdir -p "$PGDATA" && chown -R postgres:postgres "$PGDATA"
if [ ! -f "$PGDATA/PG_VERSION" ]; then
  runuser -u postgres -- "$BIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 >/dev/null
  printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
  # The model server: libtorch and the models once for all sessions.
  printf "shared_preload_libraries = 'm3ret'\n" >> "$PGDATA/postgresql.conf"
  printf "host all all 0.0.0.0/0 trust\n" >> "$PGDATA/pg_hba.conf"
fi
exec runuser -u postgres -- "$BIN/postgres" -D "$PGDATA"
