#!/usr/bin/env bash
# Starts a 3-node Garage cluster on 127.0.0.1 (replication factor 3, consistent mode) in DIR,
# creates a bucket and a key, and prints the environment a client needs, one VAR=VALUE a line.
#
#   tests/garage/cluster.sh start DIR [BASE_PORT]   # a fresh cluster; prints the env
#   tests/garage/cluster.sh stop-node DIR N         # kill node N (1-3)
#   tests/garage/cluster.sh start-node DIR N        # start node N again and reconnect it
#   tests/garage/cluster.sh stop DIR                # kill every node
#
# Needs `garage` on PATH (or GARAGE=path): `cargo install garage --version 2.5.0 --locked`.
set -euo pipefail
garage=${GARAGE:-garage}
cmd=${1:?usage: cluster.sh start|stop|stop-node|start-node DIR [...]}
dir=${2:?usage: cluster.sh $cmd DIR}

node_conf() { echo "$dir/node$1/garage.toml"; }
node_pid() { cat "$dir/node$1/pid" 2>/dev/null || true; }

start_node() {
  local n=$1
  "$garage" -c "$(node_conf "$n")" server >"$dir/node$n/log" 2>&1 &
  echo $! >"$dir/node$n/pid"
}

wait_rpc() { # node: until its CLI answers
  for _ in $(seq 1 100); do
    "$garage" -c "$(node_conf "$1")" status >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "garage node $1 did not start; see $dir/node$1/log" >&2
  exit 1
}

case "$cmd" in
start)
  base=${3:-39000}
  mkdir -p "$dir"
  secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  for n in 1 2 3; do
    p=$((base + n * 10))
    mkdir -p "$dir/node$n/meta" "$dir/node$n/data"
    cat >"$(node_conf "$n")" <<CONF
metadata_dir = "$dir/node$n/meta"
data_dir = "$dir/node$n/data"
db_engine = "lmdb"
replication_factor = 3
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$((p + 1))"
rpc_public_addr = "127.0.0.1:$((p + 1))"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$p"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((p + 3))"
CONF
    start_node "$n"
  done
  for n in 1 2 3; do wait_rpc "$n"; done
  ids=()
  for n in 1 2 3; do
    ids+=("$("$garage" -c "$(node_conf "$n")" node id -q 2>/dev/null)")
  done
  for n in 2 3; do
    "$garage" -c "$(node_conf 1)" node connect "${ids[$((n - 1))]}" >/dev/null
  done
  for n in 1 2 3; do
    "$garage" -c "$(node_conf 1)" layout assign -z dc1 -c 1G "${ids[$((n - 1))]%@*}" >/dev/null
  done
  "$garage" -c "$(node_conf 1)" layout apply --version 1 >/dev/null
  "$garage" -c "$(node_conf 1)" bucket create strata-test >/dev/null
  key=$("$garage" -c "$(node_conf 1)" key create strata-test-key)
  key_id=$(echo "$key" | awk -F': *' '/Key ID/ {print $2; exit}')
  secret_key=$(echo "$key" | awk -F': *' '/Secret key/ {print $2; exit}')
  "$garage" -c "$(node_conf 1)" bucket allow --read --write --owner strata-test --key strata-test-key >/dev/null
  # Healthy: wait until a write goes through all three nodes' layout.
  for _ in $(seq 1 50); do
    "$garage" -c "$(node_conf 1)" status 2>/dev/null | grep -q "HEALTHY NODES" && break
    sleep 0.1
  done
  cat <<ENV
AWS_ACCESS_KEY_ID=$key_id
AWS_SECRET_ACCESS_KEY=$secret_key
AWS_REGION=garage
AWS_ENDPOINT_URL=http://127.0.0.1:$((base + 10))
STRATA_TEST_S3_BUCKET=strata-test
GARAGE_CLUSTER_DIR=$dir
ENV
  ;;
stop-node)
  n=${3:?node number}
  pid=$(node_pid "$n")
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  ;;
start-node)
  n=${3:?node number}
  start_node "$n"
  wait_rpc "$n"
  "$garage" -c "$(node_conf 1)" node connect "$("$garage" -c "$(node_conf "$n")" node id -q)" >/dev/null 2>&1 || true
  ;;
stop)
  for n in 1 2 3; do
    pid=$(node_pid "$n")
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  done
  ;;
*)
  echo "unknown command $cmd" >&2
  exit 2
  ;;
esac
