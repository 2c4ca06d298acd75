#!/usr/bin/env bash
# Builds the control plane's programs from their Go modules into a per-machine cache outside the
# repository: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl, etcd, kwok, helm and
# KServe's manager. Each is built through a wrapper module under hack/k8s-tools/, whose go.mod and go.sum
# pin every version. A tool is rebuilt only when its wrapper changed; Go's own build and module caches
# make a rebuild after a small change quick.
#
#   scripts/k8s-tools.sh [NAME...]  build what is missing or stale (of the wrappers named, or all),
#                                   then print the bin folder
#   scripts/k8s-tools.sh --bin-dir  print the bin folder only
#   scripts/k8s-tools.sh --check    exit 1 if anything is missing or stale
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
wrappers=$root/hack/k8s-tools
# A module's version as its wrapper's go.mod pins it: the one place each version is written.
pinned() {
  awk -v module="$2" '$1 == module { print $2; exit } $1 == "require" && $2 == module { print $3; exit }' \
    "$wrappers/$1/go.mod"
}
k8s_version=$(pinned kubernetes k8s.io/kubernetes)
helm_version=$(pinned helm helm.sh/helm/v4)
bin_dir=${MODELYARD_K8S_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/modelyard/k8s-$k8s_version}/bin

# Kubernetes' hack/lib/version.sh stamps these; without them every component reports v0.0.0-master and
# Helm's kubeVersion checks fail.
k8s_ldflags() {
  local minor=${k8s_version#v1.}
  minor=${minor%%.*}
  local pkg flags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$flags"
}

# wrapper name, then the programs it builds, then the -ldflags for them
tool_sets() {
  echo "kubernetes|kube-apiserver kube-controller-manager kube-scheduler kubectl|$(k8s_ldflags)|k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
  echo "etcd|etcd|-s -w|modelyard.local/k8s-tools/etcd"
  echo "kwok|kwok|-s -w|sigs.k8s.io/kwok/cmd/kwok"
  echo "helm|helm|-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version|helm.sh/helm/v4/cmd/helm"
  echo "kserve|kserve-manager|-s -w|github.com/kserve/kserve/cmd/manager"
}

# What a wrapper's build depends on: its files and the flags it is built with.
wrapper_digest() {
  local files=("$wrappers/$1"/go.mod "$wrappers/$1"/go.sum)
  [ -e "$wrappers/$1/main.go" ] && files+=("$wrappers/$1/main.go")
  { cat "${files[@]}"; echo "$2"; } | sha256sum | cut -d' ' -f1
}

stale() {
  local name=$1 programs=$2 ldflags=$3 program
  [ "$(cat "$bin_dir/.$name.digest" 2>/dev/null)" = "$(wrapper_digest "$name" "$ldflags")" ] || return 0
  for program in $programs; do [ -x "$bin_dir/$program" ] || return 0; done
  return 1
}

case ${1:-} in
  --bin-dir) echo "$bin_dir"; exit 0 ;;
  --check)
    while IFS='|' read -r name programs ldflags packages; do
      if stale "$name" "$programs" "$ldflags"; then exit 1; fi
    done < <(tool_sets)
    exit 0 ;;
  -*) echo "usage: $0 [--bin-dir|--check|NAME...]" >&2; exit 2 ;;
esac
only=" $* "

mkdir -p "$bin_dir"
while IFS='|' read -r name programs ldflags packages; do
  [ "$only" = "  " ] || [[ $only == *" $name "* ]] || continue
  stale "$name" "$programs" "$ldflags" || continue
  echo "k8s-tools: building $programs ($name) into $bin_dir" >&2
  start=$SECONDS
  # One wrapper at a time, each `go build` writing several programs at once, keeps memory bounded.
  # a single program named otherwise than its package (kserve-manager) gets its name with -o
  if [[ $programs == *" "* || $programs == "${packages##*/}" ]]; then out=$bin_dir/; else out=$bin_dir/$programs; fi
  # shellcheck disable=SC2086 # the package list is split on purpose
  (cd "$wrappers/$name" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out" $packages)
  wrapper_digest "$name" "$ldflags" > "$bin_dir/.$name.digest"
  echo "k8s-tools: $name built in $((SECONDS - start)) s" >&2
done < <(tool_sets)
echo "$bin_dir"
