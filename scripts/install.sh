#!/usr/bin/env bash
# Installs sandbox as a systemd service, as root:
#   scripts/install.sh                        build (cargo build --release --locked) and install
#   scripts/install.sh --binary PATH          install this binary instead of building
#   scripts/install.sh --uninstall [--purge]  stop, disable and remove it (--purge: also config, logs and state)
#
# Installs /usr/local/bin/sandbox, /etc/systemd/system/sandbox.service, the `sandbox` group (members may
# call `sandbox exec`), an example /etc/sandbox/sandbox.toml when there is none (an existing config is
# never touched), and nftables/iproute2 when missing; runs `sandbox doctor`; then enables and starts the
# unit, or restarts it when the binary or the unit changed (running sandboxes end: their commands get
# SIGTERM, SIGKILL 5 s later). Running it again changes nothing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bin=/usr/local/bin/sandbox
unit=/etc/systemd/system/sandbox.service
dropins=/etc/systemd/system/sandbox.service.d
sysusers=/etc/sysusers.d/sandbox.conf
conf_dir=/etc/sandbox
conf=$conf_dir/sandbox.toml
doc_dir=/usr/local/share/doc/sandbox
log_dir=/var/log/sandbox
state_dir=/var/lib/sandbox  # daemon.state_dir: rotated refresh tokens
group=sandbox
# What the daemon makes in the kernel (src/kernel/marks.rs: MARK, ROUTE_TABLE, LINK_PREFIX; src/kernel/nft.rs).
mark=0x5ba
route_table=1466
link_prefix=sbx

usage() {
  sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

say() { printf 'install.sh: %s\n' "$*"; }
die() {
  printf 'install.sh: %s\n' "$*" >&2
  exit 1
}

mode=install
binary=
purge=false
while (($#)); do
  case $1 in
    --binary)
      (($# >= 2)) || die "--binary needs a path"
      binary=$2
      shift 2
      ;;
    --binary=*)
      binary=${1#--binary=}
      shift
      ;;
    --uninstall)
      mode=uninstall
      shift
      ;;
    --purge)
      purge=true
      shift
      ;;
    -h | --help) usage 0 ;;
    *)
      printf 'install.sh: unknown argument %s\n' "$1" >&2
      usage 2
      ;;
  esac
done
[[ $mode == uninstall || $purge == false ]] || die "--purge goes with --uninstall"
[[ $(id -u) -eq 0 ]] || die "run me as root (sudo $0 ...)"

# The standard PATH, whatever sudo or a minimal environment left us.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

systemd_running() { [[ -d /run/systemd/system ]]; }

# Copies $1 to $2 with mode $3 unless $2 already has that content, mode and owner; atomically (a new
# inode renamed over the old one), so a running daemon keeps executing its own binary. Adds $2 to
# `changed` if it wrote anything.
changed=()
put() {
  local source=$1 target=$2 mode=$3 tmp
  if [[ -f $target ]] && cmp -s "$source" "$target" \
    && [[ $(stat -c %a:%u:%g "$target") == "${mode#0}:0:0" ]]; then
    return 0
  fi
  mkdir -p "$(dirname "$target")"
  tmp=$(mktemp "$(dirname "$target")/.$(basename "$target").XXXXXX")
  install -m "$mode" -o root -g root "$source" "$tmp"
  mv -f "$tmp" "$target"
  changed+=("$target")
}

# ---- kernel objects ---------------------------------------------------------------------------------

# Prints what the daemon left in the kernel, one line each; nothing when clean.
leftovers() {
  if command -v nft >/dev/null && nft list table inet sandbox >/dev/null 2>&1; then
    echo "nftables table inet sandbox"
  fi
  if command -v ip >/dev/null; then
    local name family
    while read -r name; do
      [[ $name == "$link_prefix"* ]] && echo "link $name"
    done < <(ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }')
    for family in -4 -6; do
      ip "$family" rule show 2>/dev/null | grep -q "fwmark $mark/$mark lookup $route_table" \
        && echo "ip $family rule fwmark $mark/$mark lookup $route_table"
      [[ -n $(ip "$family" route show table "$route_table" 2>/dev/null) ]] \
        && echo "ip $family routes in table $route_table"
    done
  fi
  return 0
}

# Removes what a killed daemon left behind: the same objects its start-up cleanup removes.
remove_leftovers() {
  local name family
  nft delete table inet sandbox 2>/dev/null || true
  while read -r name; do
    # Deleting one end of a veth pair deletes the other: it may be gone already.
    [[ $name == "$link_prefix"* ]] && { ip link delete "$name" 2>/dev/null || true; }
  done < <(ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }')
  for family in -4 -6; do
    while ip "$family" rule del fwmark "$mark/$mark" lookup "$route_table" 2>/dev/null; do :; done
    ip "$family" route flush table "$route_table" 2>/dev/null || true
  done
}

# ---- uninstall --------------------------------------------------------------------------------------

uninstall() {
  if systemd_running; then
    if systemctl cat sandbox.service >/dev/null 2>&1; then
      # Stopping waits for the daemon to end its sandboxes and remove its kernel objects.
      systemctl disable --now --quiet sandbox.service || true
      systemctl reset-failed sandbox.service 2>/dev/null || true
      say "stopped and disabled sandbox.service"
    fi
  elif [[ -S /run/sandbox/sandbox.sock ]] && [[ -x $bin ]] && "$bin" ls >/dev/null 2>&1; then
    die "a sandbox daemon is running outside systemd; stop it (SIGTERM) first"
  fi

  local found
  found=$(leftovers)
  if [[ -n $found ]]; then
    say "removing what a killed daemon left in the kernel:"
    printf '  %s\n' "$found"
    remove_leftovers
    found=$(leftovers)
    [[ -z $found ]] || die "could not remove: $(printf '%s; ' "$found")"
  fi

  local path removed=false
  for path in "$unit" "$bin" "$sysusers" "$doc_dir"; do
    if [[ -e $path ]]; then
      rm -rf "$path"
      say "removed $path"
      removed=true
    fi
  done
  if systemd_running && [[ $removed == true ]]; then
    systemctl daemon-reload
  fi
  if getent group "$group" >/dev/null; then
    if groupdel "$group"; then
      say "removed group $group"
    else
      say "could not remove group $group (is it someone's primary group?)"
    fi
  fi
  if [[ $purge == true ]]; then
    for path in "$conf_dir" "$log_dir" "$state_dir" "$dropins"; do
      if [[ -e $path ]]; then
        rm -rf "$path"
        say "removed $path"
      fi
    done
    systemd_running && systemctl daemon-reload
  else
    for path in "$conf_dir" "$log_dir" "$state_dir" "$dropins"; do
      [[ -e $path ]] && say "kept $path (--purge removes it)"
    done
  fi
  say "uninstalled; no kernel object of sandbox is left"
}

# ---- install ----------------------------------------------------------------------------------------

install_packages() {
  local missing=() tool_pkg
  for tool_pkg in nft:nftables ip:iproute2; do
    command -v "${tool_pkg%%:*}" >/dev/null || missing+=("${tool_pkg#*:}")
  done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]}"
  if command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  elif command -v dnf >/dev/null; then
    dnf install -y -q "${missing[@]}"
  else
    die "install ${missing[*]} (no apt-get or dnf here)"
  fi
}

build() {
  local cargo
  cargo=$(PATH=$PATH:$HOME/.cargo/bin command -v cargo) \
    || die "cargo not found for root; build as yourself (cargo build --release --locked) and run: sudo $0 --binary target/release/sandbox"
  say "building: cargo build --release --locked"
  (cd "$repo" && "$cargo" build --release --locked)
  binary=${CARGO_TARGET_DIR:-$repo/target}/release/sandbox
}

install_all() {
  install_packages
  [[ -n $binary ]] || build
  [[ -f $binary && -x $binary ]] || die "$binary is not an executable file"
  "$binary" --version >/dev/null || die "$binary does not run here"

  put "$binary" "$bin" 0755
  put "$repo/systemd/sandbox.service" "$unit" 0644
  put "$repo/systemd/sandbox.sysusers" "$sysusers" 0644
  put "$repo/README.md" "$doc_dir/README.md" 0644
  put "$repo/systemd/sandbox.toml" "$doc_dir/sandbox.toml.example" 0644

  if ! getent group "$group" >/dev/null; then
    if command -v systemd-sysusers >/dev/null; then
      systemd-sysusers "$sysusers"
    else
      groupadd --system "$group"
    fi
    changed+=("group $group")
  fi

  if [[ ! -d $conf_dir ]]; then
    install -d -m 0755 -o root -g root "$conf_dir"
    changed+=("$conf_dir")
  fi
  if [[ ! -e $conf ]]; then
    "$bin" daemon --check --config "$repo/systemd/sandbox.toml" >/dev/null
    install -m 0640 -o root -g root "$repo/systemd/sandbox.toml" "$conf"
    changed+=("$conf (example)")
  fi

  # Refuse to (re)start a daemon this kernel cannot run; doctor says what to fix.
  "$bin" doctor || die "sandbox doctor found problems (above); fix them and run me again"

  if ((${#changed[@]})); then
    say "changed: ${changed[*]}"
  else
    say "already installed; nothing changed"
  fi

  if ! systemd_running; then
    say "systemd is not running here (PID 1 is $(ps -o comm= -p 1 2>/dev/null || echo unknown)):"
    say "  not enabling the unit; start the daemon yourself: $bin daemon --config $conf"
    return
  fi
  local restart=false path
  for path in "${changed[@]}"; do
    [[ $path == "$bin" || $path == "$unit" ]] && restart=true
  done
  [[ $restart == false ]] || systemctl daemon-reload
  systemctl is-enabled --quiet sandbox.service || systemctl enable --quiet sandbox.service
  if ! systemctl is-active --quiet sandbox.service; then
    systemctl start sandbox.service || {
      systemctl status --no-pager --lines=20 sandbox.service >&2 || true
      die "sandbox.service did not start (journalctl -u sandbox)"
    }
    say "started sandbox.service"
  elif [[ $restart == true ]]; then
    say "restarting sandbox.service for the new binary/unit (running sandboxes end)"
    systemctl restart sandbox.service || {
      systemctl status --no-pager --lines=20 sandbox.service >&2 || true
      die "sandbox.service did not restart (journalctl -u sandbox)"
    }
  fi
  say "sandbox.service is $(systemctl is-active sandbox.service); socket /run/sandbox/sandbox.sock"
  say "let a user run sandboxes: usermod -aG $group NAME (takes effect at their next login)"
}

case $mode in
  install) install_all ;;
  uninstall) uninstall ;;
esac
