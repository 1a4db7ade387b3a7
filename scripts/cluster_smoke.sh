#!/usr/bin/env bash
# `ray up cluster-onprem.yaml` for real, on two hosts emulated on this machine (run as root).
#
#   sudo scripts/cluster_smoke.sh            # full: up, sweep mfh (2 trials), train figr (2 workers), compare, down
#   sudo scripts/cluster_smoke.sh --short    # CI: up, train figr (2 workers on 2 hosts), down
#   options: --keep-logs DIR  copy every log (ray up/down, jobs, sshd, mlflow) to DIR before clean-up
#
# Each host is a network namespace (ip netns) with a veth into a bridge in the root namespace, its own
# PID namespace and private /tmp and home (unshare --pid --fork --mount-proc --mount), running its own
# sshd on the host's address with a key generated here. The hosts share the rest of the file system,
# so the code, the venv and the "shared storage" folder are shared as on a lab cluster with NFS.
# A concrete copy of cluster-onprem.yaml (scripts/onprem_smoke_config.py) names the two addresses and
# the key. The Ray client commands (ray up/exec/job submit/down) run in their own mount and PID
# namespace with a private /tmp and HOME, so nothing of theirs lands in this machine's /tmp or ~.
#
# Everything made here (namespaces, processes, veths, bridge, temp files) is removed on exit, even on
# failure or Ctrl-C: each host's processes by killing its PID-namespace init (by pid), which takes
# every process of that host with it.
#
# Environment: SMOKE_SUBNET (default 10.77.0: hosts .1 and .2, bridge .254), SMOKE_VENV (default the
# repository's .venv), SMOKE_UP_TIMEOUT (s, default 600), SMOKE_JOB_TIMEOUT (s, default 1200).
set -euo pipefail

T0=$(date +%s)
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${SMOKE_VENV:-$REPO/.venv}
case "$VENV" in /*) ;; *) VENV=$PWD/$VENV ;; esac   # absolute: each host's ~/venv is a link to it
SUBNET=${SMOKE_SUBNET:-10.77.0}
UP_TIMEOUT=${SMOKE_UP_TIMEOUT:-600}
JOB_TIMEOUT=${SMOKE_JOB_TIMEOUT:-1200}
SHORT=0
KEEP_LOGS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --short) SHORT=1 ;;
    --keep-logs) KEEP_LOGS=$2; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '[smoke %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (network and PID namespaces, sshd)" >&2; exit 2; }
# Each host and the Ray client get a private /tmp; a repository under /tmp (a CI clone, say) is bound back into
# it at the same path, so its top folder under /tmp is kept (KEEP) and the venv must be inside it or outside /tmp.
top_tmp() { case "$1/" in /tmp/*) echo "/tmp/$(echo "${1#/tmp/}" | cut -d/ -f1)" ;; esac; }
KEEP=$(top_tmp "$REPO")
if [ -n "$(top_tmp "$VENV")" ] && [ "$(top_tmp "$VENV")" != "$KEEP" ]; then
  echo "the venv $VENV is under /tmp, which each emulated host replaces with a private /tmp: put it inside the repository ($REPO) or outside /tmp (SMOKE_VENV)" >&2; exit 2
fi
[ -x "$VENV/bin/ray" ] || { echo "no Ray in $VENV (pip install -e '.[test]' first, or set SMOKE_VENV)" >&2; exit 2; }

# ---------------------------------------------------------------- tools
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v rsync >/dev/null || missing+=(rsync)
command -v ip >/dev/null || missing+=(iproute2)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq   # a fresh machine (CI) may have no package lists yet
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- names and clean-up
ID=$$
BR=fsbr$ID                      # interface names: at most 15 characters
NS=(fsig-h1-$ID fsig-h2-$ID)
VETH=(fsv1-$ID fsv2-$ID)
IPS=("$SUBNET.1" "$SUBNET.2")
HEAD=${IPS[0]}
CLUSTER=fsig-smoke-$ID
if ip -o -4 addr | grep -q " $SUBNET\."; then
  die "$SUBNET.0/24 is already in use on this machine: set SMOKE_SUBNET to a free private /24 (e.g. 10.78.0)"
fi
# Not under /tmp: each host mounts its own /tmp, and this folder must be seen by all of them.
T=$(mktemp -d /var/tmp/fsig-cluster-smoke.XXXXXX)
chmod 755 "$T"
mkdir -p "$T/logs" "$T/shared" "$T/client/home" "$T/client/tmp"
INIT_PIDS=()        # each host's PID-namespace init, as this machine sees it
UNSHARE_PIDS=()     # their parents (unshare, started here)
MADE_RUN_SSHD=0
RC_CLEAN=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  say "clean-up (exit status so far $rc)"
  if [ -n "$KEEP_LOGS" ]; then
    mkdir -p "$KEEP_LOGS" && cp -r "$T/logs/." "$KEEP_LOGS/" 2>/dev/null
    for i in 0 1; do cp "$T/h$((i+1))/home/mlflow.log" "$KEEP_LOGS/mlflow-h$((i+1)).log" 2>/dev/null; done
    say "logs kept in $KEEP_LOGS"
  fi
  local p
  for p in "${INIT_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done       # takes the host's processes with it
  for p in "${UNSHARE_PIDS[@]}"; do   # unshare reaps its child and exits; it is killed only if it lingers
    for _ in $(seq 50); do [ -d /proc/$p ] || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
  done
  local i
  for i in 0 1; do
    ip netns del "${NS[$i]}" 2>/dev/null
    ip link del "${VETH[$i]}" 2>/dev/null
  done
  ip link del "$BR" 2>/dev/null
  [ "$MADE_RUN_SSHD" = 1 ] && rmdir /run/sshd 2>/dev/null
  rm -rf "$T"
  # What is left, if anything (checked, not assumed):
  local left=""
  for p in "${INIT_PIDS[@]}" "${UNSHARE_PIDS[@]}"; do [ -d /proc/$p ] && left+=" pid $p"; done
  for i in 0 1; do ip netns list | grep -qw "${NS[$i]}" && left+=" netns ${NS[$i]}";
    ip link show "${VETH[$i]}" >/dev/null 2>&1 && left+=" veth ${VETH[$i]}"; done
  ip link show "$BR" >/dev/null 2>&1 && left+=" bridge $BR"
  [ -e "$T" ] && left+=" $T"
  if [ -n "$left" ]; then say "LEFT BEHIND:$left"; [ $rc = 0 ] && rc=1; else say "nothing left behind"; fi
  say "total $(( $(date +%s) - T0 )) s ($( [ $rc = 0 ] && echo passed || echo "FAILED, status $rc"))"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- two hosts
PY_REAL=$(readlink -f "$VENV/bin/python")
PY_UNDER_ROOT=""
case "$PY_REAL" in /root/*) PY_UNDER_ROOT=$(echo "${PY_REAL#/root/}" | cut -d/ -f1) ;; esac
say "hosts ${IPS[*]} on bridge $BR; work folder $T"
ssh-keygen -q -t ed25519 -N "" -C "$CLUSTER" -f "$T/id_ed25519"
cp "$T/id_ed25519.pub" "$T/authorized_keys"
if [ ! -d /run/sshd ]; then mkdir -p /run/sshd && chmod 755 /run/sshd && MADE_RUN_SSHD=1; fi
ip link add "$BR" type bridge
ip addr add "$SUBNET.254/24" dev "$BR"
ip link set "$BR" up
for i in 0 1; do
  n=${NS[$i]} h=$T/h$((i+1))
  mkdir -p "$h/home"
  ln -s "$VENV" "$h/home/venv"      # the venv the setup commands would create (see onprem_smoke_config.py)
  ssh-keygen -q -t ed25519 -N "" -f "$h/ssh_host_ed25519_key"
  ip netns add "$n"
  ip link add "${VETH[$i]}" type veth peer name eth0 netns "$n"
  ip link set "${VETH[$i]}" master "$BR" up
  ip -n "$n" addr add "${IPS[$i]}/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
  # PID 1 of the host is its sshd: when it dies, the kernel kills every process of the host.
  # The home is private too; only the Python the venv links to is bound back in (read-only) if it
  # lives under /root (pyenv).
  printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "${IPS[0]}" "${NS[0]}" "${IPS[1]}" "${NS[1]}" > "$h/hosts"
  # Its own hostname too (UTS namespace), resolving to its address as on a lab's network: with no
  # default route in the namespace, Ray finds a node's address by resolving the hostname (otherwise
  # 127.0.0.1), and torch.distributed looks up its peers' names.
  ip netns exec "$n" unshare --pid --fork --kill-child --mount-proc --mount --uts sh -c '
    hostname "$5" && mount --bind "$1/hosts" /etc/hosts &&
    if [ -n "$6" ]; then mkdir -p "$1/keep" && mount --bind "$6" "$1/keep"; fi && mount -t tmpfs tmpfs /tmp &&
    if [ -n "$6" ]; then mkdir -p "$6" && mount --bind "$1/keep" "$6"; fi &&
    if [ -n "$4" ]; then mkdir -p "$1/home/$4" && mount --bind "/root/$4" "$1/home/$4" &&
      mount -o remount,bind,ro "$1/home/$4"; fi &&
    mount --rbind "$1/home" /root && cd /root &&
    exec /usr/sbin/sshd -D -e -f /dev/null -o ListenAddress="$2" -o HostKey="$1/ssh_host_ed25519_key" \
      -o AuthorizedKeysFile="$3" -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no \
      -o StrictModes=no -o UsePAM=no -o PidFile=none -o MaxStartups=100 -o MaxSessions=100' \
    sh "$h" "${IPS[$i]}" "$T/authorized_keys" "$PY_UNDER_ROOT" "$n" "$KEEP" > "$T/logs/sshd-h$((i+1)).log" 2>&1 &
  UNSHARE_PIDS+=($!)
done
for i in 0 1; do   # the init is unshare's only child
  for _ in $(seq 50); do
    c=$(cat /proc/${UNSHARE_PIDS[$i]}/task/*/children 2>/dev/null | tr -s ' ' '\n' | grep -m1 . || true)
    [ -n "$c" ] && break; sleep 0.1
  done
  [ -n "$c" ] || die "host $((i+1)) did not start (see $T/logs/sshd-h$((i+1)).log)"
  INIT_PIDS+=("$c")
done
SSH=(ssh -i "$T/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
     -o ConnectTimeout=5 -o BatchMode=yes)
for i in 0 1; do
  ok=0
  for _ in $(seq 50); do "${SSH[@]}" root@"${IPS[$i]}" true 2>/dev/null && { ok=1; break; }; sleep 0.2; done
  [ $ok = 1 ] || die "no SSH to ${IPS[$i]} (see $T/logs/sshd-h$((i+1)).log)"
done
say "hosts up (host inits: pids ${INIT_PIDS[*]}); ssh root@${IPS[0]} / root@${IPS[1]} work"

# ---------------------------------------------------------------- the Ray client
# ray up/exec/job/down run here, in the root network namespace (the machine a researcher types on),
# with a private /tmp (Ray's SSH control sockets, the local provider's state file, the config cache)
# and HOME (the auth token), in a PID namespace of their own so no SSH master outlives a command.
client() {
  env HOME="$T/client/home" PATH="$VENV/bin:$PATH" RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 \
    unshare --pid --fork --kill-child --mount-proc --mount \
    sh -c 'k=$2; if [ -n "$k" ]; then mkdir -p "$0.keep" && mount --bind "$k" "$0.keep"; fi &&
      mount --bind "$0" /tmp && if [ -n "$k" ]; then mkdir -p "$k" && mount --bind "$0.keep" "$k"; fi &&
      cd "$1" && shift 2 && exec "$@"' "$T/client/tmp" "$REPO" "$KEEP" "$@"
}
on_head() {  # a command on the head in its login environment (what ray exec runs), without Ray's CLI start-up
  "${SSH[@]}" root@"$HEAD" "source ~/.bashrc >/dev/null 2>&1; $*"
}
CFG=$T/cluster.yaml
client ray get-auth-token --generate > /dev/null 2>> "$T/logs/client.log"
client python scripts/onprem_smoke_config.py --head-ip "$HEAD" --worker-ip "${IPS[1]}" \
  --key "$T/id_ed25519" --shared "$T/shared" --cluster-name "$CLUSTER" --repo "$REPO" \
  --token "$T/client/home/.ray/auth_token" > "$CFG"
say "concrete config $CFG (cluster-onprem.yaml with these hosts, key and shared folder)"

# ---------------------------------------------------------------- ray up, then wait for 2 nodes
t=$(date +%s)
say "ray up (head ${IPS[0]}, worker ${IPS[1]}); log $T/logs/ray-up.log"
if ! timeout "$UP_TIMEOUT" bash -c "$(declare -f client); $(declare -p T VENV REPO KEEP); client ray up -y --no-config-cache '$CFG'" \
     > "$T/logs/ray-up.log" 2>&1; then
  tail -40 "$T/logs/ray-up.log"; die "ray up failed or took over $UP_TIMEOUT s"
fi
say "ray up returned after $(( $(date +%s) - t )) s"
nodes=0
deadline=$(( $(date +%s) + UP_TIMEOUT ))
while [ "$(date +%s)" -lt $deadline ]; do
  st=$(on_head 'ray status' 2>/dev/null || true)
  # "Active:" lists " COUNT NODE_TYPE" lines up to "Pending:"; sum the counts.
  nodes=$(printf '%s\n' "$st" | awk '/^Active:/{a=1;next} /^Pending:/{a=0} a && $1 ~ /^[0-9]+$/ {n+=$1} END{print n+0}')
  [ "$nodes" -ge 2 ] && break
  sleep 5
done
printf '%s\n' "$st" | sed -n '/^Node status/,/^Resources/p'
[ "$nodes" -ge 2 ] || { on_head 'tail -30 /tmp/ray/session_latest/logs/monitor.log' || true; die "only $nodes node(s) after $UP_TIMEOUT s"; }
T_UP=$(( $(date +%s) - t ))
say "2 nodes active, $T_UP s after ray up started"

MLFLOW=http://$HEAD:5000
t_ml=$(date +%s)   # at most 300 s: 116 s was seen on a loaded machine (the server's first start creates its tables)
until curl -sf -m 10 "$MLFLOW/health" >/dev/null; do [ $(( $(date +%s) - t_ml )) -ge 300 ] && break; sleep 1; done
curl -sf -m 10 "$MLFLOW/health" >/dev/null || { on_head 'tail -20 ~/mlflow.log'; die "no MLflow server at $MLFLOW"; }
say "MLflow tracking server up on the head: $MLFLOW"

# ---------------------------------------------------------------- jobs
submit() {  # submit ID ENTRYPOINT: ray job submit from this machine to the head's job API, waiting for the end
  local id=$1 cmd=$2 t1 rc=0
  t1=$(date +%s)
  say "ray job submit $id: $cmd"
  timeout "$JOB_TIMEOUT" bash -c "$(declare -f client); $(declare -p T VENV REPO KEEP); \
    client ray job submit --address 'http://$HEAD:8265' --submission-id '$id' -- bash -c '$cmd'" \
    > "$T/logs/$id.log" 2>&1 || rc=$?
  grep -E "ip=$SUBNET\.|Started|world_rank|sweep name|run_id|Traceback|Error|error:" "$T/logs/$id.log" \
    | grep -v "^\s*$" | sort -u | head -40 || true
  if [ $rc != 0 ] || ! grep -q "succeeded" "$T/logs/$id.log"; then
    tail -60 "$T/logs/$id.log"; die "job $id failed (status $rc) after $(( $(date +%s) - t1 )) s"
  fi
  say "job $id succeeded in $(( $(date +%s) - t1 )) s"
}
ORCH="cd ~/fewshot-orchestrator && python -m orchestrator"
COMMON="--address auto --tracking-uri $MLFLOW --steps 4 --set eval_every=2 --cpus-per-worker 2"
JOBS=()
if [ $SHORT = 0 ]; then
  # 2 CPUs per worker on 2-CPU hosts: each host holds one trial's worker, so the 2 trials use both.
  submit smoke-sweep-$ID "$ORCH sweep mfh $COMMON --trials 2 --concurrency 2 --json"
  JOBS+=(--job "smoke-sweep-$ID:sweep:2")
fi
submit smoke-train-$ID "$ORCH train figr $COMMON --workers 2 --json"
JOBS+=(--job "smoke-train-$ID:train:2")

# ---------------------------------------------------------------- where everything ran; compare
say "where the workers ran (Ray State API on the head) and the node tags of the MLflow runs"
on_head "cd ~/fewshot-orchestrator && python scripts/cluster_nodes.py --tracking-uri $MLFLOW ${JOBS[*]}" \
  || die "placement check failed"
if [ $SHORT = 0 ]; then
  say "python -m orchestrator compare on the head, against its MLflow server"
  on_head "cd ~/fewshot-orchestrator && python -m orchestrator compare --tracking-uri $MLFLOW --out /tmp/compare.png" \
    > "$T/logs/compare.log" 2>&1 || { cat "$T/logs/compare.log"; die "compare failed"; }
  grep -v "^\s*$" "$T/logs/compare.log" | tail -20
fi

# ---------------------------------------------------------------- ray down (bounded)
t=$(date +%s)
if timeout 120 bash -c "$(declare -f client); $(declare -p T VENV REPO KEEP); client ray down -y '$CFG'" \
     > "$T/logs/ray-down.log" 2>&1; then
  say "ray down returned after $(( $(date +%s) - t )) s"
else
  say "ray down did not finish within 120 s (status $?); the hosts are removed below either way"
fi
ray_procs() { "${SSH[@]}" root@"$1" "ps -eo comm= | grep -cE '^(raylet|gcs_server)\$' || true" 2>/dev/null || echo "?"; }
say "Ray processes (raylet, gcs_server) left after ray down: head $(ray_procs "$HEAD"), worker $(ray_procs "${IPS[1]}")"
if [ $SHORT = 0 ]; then
  # ray down runs `ray stop` on the head only (the local provider does not stop workers); a worker's
  # raylet exits on its own once it has lost the head for long enough. How long that takes:
  t=$(date +%s)
  while [ "$(ray_procs "${IPS[1]}")" != 0 ] && [ $(( $(date +%s) - t )) -lt 120 ]; do sleep 5; done
  say "worker's Ray processes after $(( $(date +%s) - t )) s more: $(ray_procs "${IPS[1]}")"
fi
say "each host's remaining processes go with its PID namespace below"
say "smoke passed: up $T_UP s to 2 nodes; mode $( [ $SHORT = 1 ] && echo short || echo full)"
