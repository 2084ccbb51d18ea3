#!/usr/bin/env bash
# Builds docker/Dockerfile with podman, with no image registry: the Debian 12 base
# image is made from Debian's own packages (debootstrap, then podman import). Then
# runs the image, connects to it and runs the demo's kind of queries: the extension,
# the shipped model, an embedding and a nearest-neighbour query through m3ret_hnsw.
#
#   bash scripts/container.sh            # build (about 30 min cold on 2 cores) and run
#   M3RET_CONTAINER_PORT=55499 ...       # the host port the container listens on
#
# Needs root (podman and debootstrap as root), Debian's package mirror, PyPI,
# crates.io and static.rust-lang.org (the Dockerfile's rustup-init).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work="${M3RET_CONTAINER_DIR:-/var/cache/m3ret/container}"
port="${M3RET_CONTAINER_PORT:-55499}"
base=localhost/m3ret-base-bookworm
mkdir -p "$work"

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap runc >/dev/null
fi
# What made podman work in the sandboxes this was tried in (cgroup v1 mounted, no
# CAP_SYS_RESOURCE): runc with cgroupfs (crun refuses the hybrid cgroup layout), and
# resource limits lowered rather than raised to podman's defaults.
podman=(podman --runtime runc --cgroup-manager=cgroupfs)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)
if ! "${podman[@]}" image exists "$base"; then
  if [ ! -x "$work/rootfs/bin/bash" ]; then
    rm -rf "$work/rootfs"
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian
  fi
  tar -C "$work/rootfs" -c . | "${podman[@]}" import - "$base"
fi
# Host networking: the build downloads packages, and the sandboxes this runs in may
# not allow podman's own networks.
# Certificates this host trusts beyond Debian's (e.g. a proxy that re-signs TLS),
# trusted by the build steps only.
extra_ca="$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)"
"${podman[@]}" build --network host "${limits[@]}" --build-arg BASE="$base" \
  --build-arg EXTRA_CA_CERTS="$extra_ca" -f docker/Dockerfile -t localhost/m3ret .

"${podman[@]}" rm -f m3ret-container-check >/dev/null 2>&1 || true
# PGPORT: the postmaster's default port, so the host's own clusters are left alone.
"${podman[@]}" run -d --name m3ret-container-check --network host "${limits[@]}" -e PGPORT="$port" localhost/m3ret >/dev/null
trap '"${podman[@]}" logs m3ret-container-check | tail -20; "${podman[@]}" rm -f m3ret-container-check >/dev/null' EXIT
for _ in $(seq 600); do
  pg_isready -q -h 127.0.0.1 -p "$port" -U postgres && break
  sleep 0.2
done
psql=(psql -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -X -q)
"${psql[@]}" <<'SQL'
CREATE EXTENSION m3ret;
SELECT m3ret_model_import('m3ret-default', pg_read_binary_file('/opt/m3ret/models/m3ret-default.safetensors'));
CREATE TABLE studies (id int PRIMARY KEY, file text, emb embedding(64));
INSERT INTO studies
SELECT i, f, m3ret_embed(pg_read_binary_file('/opt/m3ret/src/fixtures/' || f), m)
FROM (VALUES (1, 'covidrepo_0637.jpg', 'xray'), (2, 'pmnist_train_0000.png', 'xray'),
             (3, 'wce_img1310.jpg', 'endoscopy'), (4, 'totalseg_example_ct.nii.gz', 'ct'),
             (5, 'totalseg_example_mr_sm.nii.gz', 'mri')) AS t(i, f, m);
CREATE INDEX ON studies USING m3ret_hnsw (emb embedding_cosine_ops);
SET enable_seqscan = off;
\echo 'nearest to the COVID X-ray, through m3ret_hnsw:'
SELECT id, file, round((emb <=> (SELECT emb FROM studies WHERE id = 1))::numeric, 4) AS distance
FROM studies ORDER BY emb <=> (SELECT emb FROM studies WHERE id = 1) LIMIT 5;
SELECT m3ret_runtime_info()->>'inference' AS inference,
       m3ret_runtime_info()->'server'->>'pid' IS NOT NULL AS server_answers;
SQL
echo "[container] the image built, started and answered" >&2
