#!/usr/bin/env bash
# Build (or reuse) the control-plane tools from their Go modules and print their directory.
#
# Tools: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes),
# kwok and helm, at the versions pinned in hack/tools.pins. They land in
#   $TOOLS_CACHE/<key>/        (TOOLS_CACHE defaults to ~/.cache/finetune-operator/tools)
# where <key> hashes the pins, these scripts and the Go version, so a pin change rebuilds and
# nothing else does. The LAST line on stdout is that directory; progress goes to stderr.
# Concurrent invocations are serialised by a lock file; the directory only appears once complete.
# Go's own caches stay where Go keeps them (~/go/pkg/mod, ~/.cache/go-build).
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tools.pins
source "$HACK/tools.pins"
TOOLS_CACHE="${TOOLS_CACHE:-$HOME/.cache/finetune-operator/tools}"
export GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false"

log() { echo "build-tools: $*" >&2; }

command -v go >/dev/null || { log "go not found on PATH; install Go >= 1.26"; exit 1; }
GO_VERSION="$(go env GOVERSION) $(go env GOOS)/$(go env GOARCH)"
KEY="$( { cat "$HACK/tools.pins" "$HACK/build-tools.sh" "$HACK/gowrapper.py"; echo "$GO_VERSION"; } \
        | sha256sum | cut -c1-16)"
OUT="$TOOLS_CACHE/$KEY"
TOOLS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

complete() { [[ -f "$OUT/.complete" ]]; }

mkdir -p "$TOOLS_CACHE"
if ! complete; then
  exec 9>"$TOOLS_CACHE/$KEY.lock"
  if ! flock -n 9; then
    log "another build of $KEY is running; waiting for its lock"
    flock 9
  fi
fi

if ! complete; then
  PARTIAL="$TOOLS_CACHE/$KEY.partial"
  SRC="$TOOLS_CACHE/$KEY.src"
  rm -rf "$PARTIAL" "$SRC"
  mkdir -p "$PARTIAL" "$SRC"
  START=$(date +%s)
  NICE=(nice -n 10)
  log "cold build into $OUT with $GO_VERSION (takes a while on few cores; logs on stderr)"

  # go.mod of a published module version, fetched through the module proxy.
  upstream_mod() { go mod download -json "$1@$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'; }

  # A wrapper module in $SRC/$1 requiring $2@$3 with its local replaces mapped to version $4.
  wrapper() {
    local dir="$SRC/$1" gomod
    mkdir -p "$dir"
    gomod="$(cd "$dir" && upstream_mod "$2" "$3")"
    python3 "$HACK/gowrapper.py" "$gomod" "finetune.dev/tools/$1" "$2" "$3" "$4" > "$dir/go.mod"
  }

  # etcd: the server module's main package, from a wrapper (its go.mod replaces ../api etc.).
  log "etcd $ETCD_VERSION"
  wrapper etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION"
  (cd "$SRC/etcd" && "${NICE[@]}" go build -mod=mod -ldflags="-s -w" -o "$PARTIAL/etcd" go.etcd.io/etcd/server/v3)

  # kwok: no replaces upstream, so a plain pinned install.
  log "kwok $KWOK_VERSION"
  GOBIN="$PARTIAL" "${NICE[@]}" go install \
    -ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

  # Kubernetes: one wrapper, all binaries in one go build so shared packages compile once.
  log "kubernetes $KUBERNETES_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)"
  K8S_MINOR="${KUBERNETES_VERSION#v1.}"; K8S_MINOR="${K8S_MINOR%%.*}"
  STAGING_VERSION="v0.${KUBERNETES_VERSION#v1.}"
  wrapper kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION" "$STAGING_VERSION"
  K8S_LDFLAGS="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LDFLAGS+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
    K8S_LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$SRC/kubernetes" && "${NICE[@]}" go build -mod=mod -ldflags="$K8S_LDFLAGS" -o "$PARTIAL/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)

  # helm: no replaces upstream, so a plain pinned install.
  log "helm $HELM_MODULE $HELM_VERSION"
  GOBIN="$PARTIAL" "${NICE[@]}" go install \
    -ldflags="-s -w -X $HELM_MODULE/internal/version.version=$HELM_VERSION" "$HELM_MODULE/cmd/helm@$HELM_VERSION"

  for tool in "${TOOLS[@]}"; do
    [[ -x "$PARTIAL/$tool" ]] || { log "missing $tool after build"; exit 1; }
  done
  SECONDS_TAKEN=$(( $(date +%s) - START ))
  {
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ) seconds=$SECONDS_TAKEN go=\"$GO_VERSION\" cpus=$(nproc)"
    cat "$HACK/tools.pins" | grep -v '^#'
    du -sh "$PARTIAL" | cut -f1 | sed 's/^/size=/'
  } > "$PARTIAL/BUILD_INFO"
  touch "$PARTIAL/.complete"
  rm -rf "$OUT"
  mv "$PARTIAL" "$OUT"
  rm -rf "$SRC"
  log "built in ${SECONDS_TAKEN}s: $(du -sh "$OUT" | cut -f1)"
fi

# Mark this build used and drop builds of other pins unused for two weeks (~500 MB each).
touch "$OUT/.last-used"
find "$TOOLS_CACHE" -mindepth 2 -maxdepth 2 -name .last-used -mtime +14 -printf '%h\n' 2>/dev/null \
  | while read -r stale; do
      if [[ "$stale" != "$OUT" ]]; then log "pruning unused $stale"; rm -rf "$stale"; fi
    done

echo "$OUT"
