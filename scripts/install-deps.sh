#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian machine: Debian packages for the real
# test peers (only those missing), and checks for the Go and Rust toolchains.
set -euo pipefail

# command -> Debian package providing it
declare -A NEEDED=(
  [git]=git
  [curl]=curl
  [age]=age                     # SOPS interop: Debian's age opens our key stanzas
  [age-keygen]=age
  [sshd]=openssh-server         # git over SSH in tests (a real OpenSSH server on loopback)
  [ssh]=openssh-client
  [pkg-config]=pkg-config       # building libgit2/libssh2 bindings
  [/usr/include/openssl/ssl.h]=libssl-dev
  [/usr/bin/time]=time          # benchmarks measure peak RSS with GNU time
  [nginx]=nginx                 # git over HTTPS in tests: nginx + fcgiwrap + git http-backend
  [fcgiwrap]=fcgiwrap
  [openssl]=openssl             # the HTTPS git server's htpasswd hash (openssl passwd -apr1)
  [/usr/lib/postgresql]=postgresql  # PVC data tests: initdb, pgbench, pg_amcheck on a real data directory
  [setpriv]=util-linux          # PVC data tests: run each process with exactly its pod's privileges
  [umoci]=umoci                 # make image: the OCI image without a container engine
  [/etc/ssl/certs/ca-certificates.crt]=ca-certificates  # the image's CA bundle
  [file]=file                   # the image test: the binary is static and stripped
  [objcopy]=binutils            # make image: strips the binary
)

missing=()
for cmd in "${!NEEDED[@]}"; do
  if [[ "$cmd" == /* ]]; then
    [ -e "$cmd" ] || missing+=("${NEEDED[$cmd]}")
  else
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${NEEDED[$cmd]}")
  fi
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# sshd (a test peer) needs its privilege-separation directory, created at boot on Debian.
if [ ! -d /run/sshd ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo mkdir -p /run/sshd
fi

command -v go >/dev/null || { echo "install-deps: Go >= 1.26 is required to build kube-apiserver (https://go.dev/dl)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "install-deps: Rust (cargo) is required (https://rustup.rs)" >&2; exit 1; }
