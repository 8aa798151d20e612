#!/usr/bin/env bash
# Bare-metal host settings hearth is meant to run with (see tuning/README.md).
#
#   tuning/tune.sh status [--housekeeping CPUS]     current vs recommended, changes nothing
#   tuning/tune.sh apply  [--housekeeping CPUS]     set them; previous values -> state file
#   tuning/tune.sh revert                           restore exactly what apply changed
#   tuning/tune.sh values                           raw path=value dump (before/after checks)
#
# Options: --housekeeping CPUS  cores that keep IRQs (list syntax: 0 or 0,1 or 0-1);
#                               hearth's shards then run on the others (taskset).
#                               Without it the IRQ setting is skipped.
#          --only a,b,...       only these settings (names in SETTINGS below)
#          --state-dir DIR      default /var/lib/hearth-tuning
#
# Every setting is skipped, with a message, where the machine lacks it (no
# cpufreq in VMs/containers, read-only /proc/sys, IRQs the kernel won't move).
# apply records a value only after writing it succeeded, and never overwrites a
# value it already recorded, so apply twice + revert still restores the original.
set -uo pipefail
shopt -s extglob

SETTINGS="governor irq somaxconn syn_backlog netdev_backlog busy_poll busy_read limits thp io_uring"

# name -> "path recommended"; the governor, irq and limits settings are special.
declare -A FILE_SETTING=(
    [somaxconn]="/proc/sys/net/core/somaxconn 65535"
    [syn_backlog]="/proc/sys/net/ipv4/tcp_max_syn_backlog 65535"
    [netdev_backlog]="/proc/sys/net/core/netdev_max_backlog 16384"
    [busy_poll]="/proc/sys/net/core/busy_poll 50"
    [busy_read]="/proc/sys/net/core/busy_read 50"
    [thp]="/sys/kernel/mm/transparent_hugepage/enabled madvise"
    [io_uring]="/proc/sys/kernel/io_uring_disabled 0"
)
LIMITS_FILE="/etc/security/limits.d/90-hearth.conf"
NOFILE=1048576
LIMITS_CONTENT="# hearth: written by tuning/tune.sh apply, removed by tuning/tune.sh revert.
# Applies to PAM logins; for a systemd service set LimitNOFILE=$NOFILE and
# LimitMEMLOCK=infinity in the unit instead. ('*' does not cover root.)
*     soft  nofile   $NOFILE
*     hard  nofile   $NOFILE
root  soft  nofile   $NOFILE
root  hard  nofile   $NOFILE
*     soft  memlock  unlimited
*     hard  memlock  unlimited
root  soft  memlock  unlimited
root  hard  memlock  unlimited"

CMD="${1:-}"; shift || true
HK=""; ONLY=""; STATE_DIR="/var/lib/hearth-tuning"
while [ $# -gt 0 ]; do
    case "$1" in
        --housekeeping) HK="${2:-}"; shift 2 ;;
        --only) ONLY="${2:-}"; shift 2 ;;
        --state-dir) STATE_DIR="${2:-}"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
STATE="$STATE_DIR/state"

say() { printf '%-15s %s\n' "$1" "$2"; }
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# --- values ------------------------------------------------------------------------
read_val() { # path -> value; THP files show "always [madvise] never"
    local v; v="$(cat "$1" 2>/dev/null)" || return 1
    if [[ "$v" == *"["*"]"* ]]; then v="${v#*[}"; v="${v%%]*}"; fi
    printf '%s' "$v"
}

write_val() { # path value -> 0 if the value reads back
    { printf '%s\n' "$2" > "$1"; } 2>/dev/null || return 1
    [ "$(read_val "$1")" = "$2" ] || same_mask "$(read_val "$1")" "$2"
}

# CPU list ("0,2-3") -> expanded numbers, one per line.
expand_cpus() {
    local part a b
    for part in ${1//,/ }; do
        if [[ "$part" == *-* ]]; then a="${part%-*}"; b="${part#*-}"; seq "$a" "$b"
        else echo "$part"; fi
    done
}

# CPU list -> hex mask in the kernel's format (32-bit words joined by commas).
cpus_to_mask() {
    local -a w=(); local c i out=""
    while read -r c; do
        i=$((c / 32)); w[i]=$(( ${w[i]:-0} | (1 << (c % 32)) ))
    done < <(expand_cpus "$1")
    for ((i = ${#w[@]} - 1; i >= 0; i--)); do
        if [ -z "$out" ]; then out="$(printf '%x' "${w[i]:-0}")"
        else out="$out,$(printf '%08x' "${w[i]:-0}")"; fi
    done
    printf '%s' "$out"
}
same_mask() { # hex masks equal, ignoring commas and leading zeros
    [[ "$1" =~ ^[0-9a-fA-F,]+$ && "$2" =~ ^[0-9a-fA-F,]+$ ]] || return 1
    local a="${1//,/}" b="${2//,/}"
    a="${a##+(0)}"; b="${b##+(0)}"
    [ "$a" = "$b" ]
}

# --- state --------------------------------------------------------------------------
recorded() { [ -f "$STATE" ] && cut -f1 "$STATE" | grep -qxF "$1"; }
record() { # path previous-value; the first record of a path wins
    mkdir -p "$STATE_DIR" && chmod 700 "$STATE_DIR"
    recorded "$1" || printf '%s\t%s\n' "$1" "$2" >> "$STATE"
}

# --- a plain file setting ----------------------------------------------------------------
file_setting() { # mode name path want
    local mode="$1" name="$2" path="$3" want="$4" cur
    if [ ! -e "$path" ]; then say "$name" "skipped: $path not on this machine"; return; fi
    if ! cur="$(read_val "$path")"; then say "$name" "skipped: $path unreadable"; return; fi
    case "$mode" in
        status)
            local st="ok"; [ "$cur" = "$want" ] || st="differs"
            [ -w "$path" ] || st="$st, read-only here"
            say "$name" "current=$cur recommended=$want ($st)" ;;
        apply)
            if [ "$cur" = "$want" ]; then say "$name" "already $want"; return; fi
            if write_val "$path" "$want"; then
                record "$path" "$cur"; say "$name" "$cur -> $want"
            else
                say "$name" "skipped: cannot write $path here (read-only in a container/VM?)"
            fi ;;
    esac
}

# --- CPU frequency governor ----------------------------------------------------------------
governor() { # mode
    local files=(/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor) f cur n=0 bad=0 done=0
    if [ ! -e "${files[0]}" ]; then say governor "skipped: no cpufreq in sysfs (VM or container)"; return; fi
    for f in "${files[@]}"; do
        cur="$(read_val "$f")"; n=$((n + 1))
        [ "$cur" = performance ] && continue
        if [ "$1" = status ]; then bad=$((bad + 1)); continue; fi
        if ! grep -qw performance "${f%/*}/scaling_available_governors" 2>/dev/null; then
            say governor "skipped ${f%/cpufreq/*}: no 'performance' governor"; continue
        fi
        if write_val "$f" performance; then record "$f" "$cur"; done=$((done + 1))
        else say governor "skipped ${f%/cpufreq/*}: cannot write"; fi
    done
    if [ "$1" = status ]; then
        say governor "$((n - bad))/$n CPUs on 'performance' (recommended: all)"
    else
        say governor "set 'performance' on $done CPUs ($n with cpufreq)"
    fi
}

# --- IRQ affinity ---------------------------------------------------------------------------------
valid_hk() {
    [[ "$HK" =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || return 1
    local c online; online="$(expand_cpus "$(cat /sys/devices/system/cpu/online)")"
    while read -r c; do grep -qx "$c" <<<"$online" || return 1; done < <(expand_cpus "$HK")
}

irq() { # mode
    local f cur n=0 on=0 moved=0 stuck=""
    if [ ! -e /proc/irq ]; then say irq "skipped: no /proc/irq"; return; fi
    if pgrep -x irqbalance >/dev/null 2>&1; then
        say irq "warning: irqbalance is running and will move IRQs back (stop it first)"
    fi
    if [ -z "$HK" ]; then
        if [ "$1" = apply ]; then say irq "skipped: no --housekeeping CPUS given"; return; fi
    elif ! valid_hk; then
        say irq "skipped: --housekeeping '$HK' is not a list of online CPUs"; return
    fi
    for f in /proc/irq/[0-9]*/smp_affinity_list; do
        [ -e "$f" ] || continue
        cur="$(read_val "$f")"; n=$((n + 1))
        if [ -n "$HK" ] && [ "$cur" = "$HK" ]; then on=$((on + 1)); continue; fi
        [ "$1" = apply ] || continue
        if write_val "$f" "$HK"; then record "$f" "$cur"; moved=$((moved + 1))
        else f="${f%/smp_affinity_list}"; stuck="$stuck ${f##*/}"; fi
    done
    if [ "$1" = status ]; then
        if [ -z "$HK" ]; then
            say irq "$n IRQs; affinities: $(cat /proc/irq/[0-9]*/smp_affinity_list 2>/dev/null | sort | uniq -c | awk '{printf "%s on %s; ", $1, $2}')(give --housekeeping to compare)"
        else
            say irq "$on/$n IRQs on housekeeping CPUs $HK (recommended: all movable ones)"
        fi
        say irq_default "current=$(cat /proc/irq/default_smp_affinity 2>/dev/null || echo none)${HK:+ recommended=$(cpus_to_mask "$HK")}"
        return
    fi
    say irq "moved $moved, already there $on, of $n IRQs${stuck:+; kernel refused (per-CPU/managed):$stuck}"
    local d=/proc/irq/default_smp_affinity want
    want="$(cpus_to_mask "$HK")"; cur="$(read_val "$d")"
    if same_mask "$cur" "$want"; then say irq_default "already $cur"
    elif write_val "$d" "$want"; then record "$d" "$cur"; say irq_default "$cur -> $want"
    else say irq_default "skipped: cannot write $d"; fi
}

# --- file-descriptor and memlock limits ------------------------------------------------------------
limits() { # mode
    local dir="${LIMITS_FILE%/*}"
    if [ "$1" = status ]; then
        local st="absent"
        [ -f "$LIMITS_FILE" ] && { [ "$(cat "$LIMITS_FILE")" = "$LIMITS_CONTENT" ] && st="present" || st="present, differs"; }
        say limits "$LIMITS_FILE $st; this shell: nofile=$(ulimit -n) memlock=$(ulimit -l) (recommended $NOFILE / unlimited); fs.nr_open=$(cat /proc/sys/fs/nr_open)"
        return
    fi
    if [ ! -d "$dir" ]; then say limits "skipped: no $dir (no pam_limits here)"; return; fi
    if [ "$(cat /proc/sys/fs/nr_open)" -lt "$NOFILE" ]; then
        say limits "note: fs.nr_open < $NOFILE, the nofile limit will be capped"
    fi
    if [ -f "$LIMITS_FILE" ] && [ "$(cat "$LIMITS_FILE")" = "$LIMITS_CONTENT" ]; then
        say limits "already $LIMITS_FILE"; return
    fi
    mkdir -p "$STATE_DIR" && chmod 700 "$STATE_DIR"
    if [ -f "$LIMITS_FILE" ]; then
        recorded "$LIMITS_FILE" || cp -p "$LIMITS_FILE" "$STATE_DIR/limits.orig"
        record "$LIMITS_FILE" "@backup"
    else
        record "$LIMITS_FILE" "@absent"
    fi
    if printf '%s\n' "$LIMITS_CONTENT" > "$LIMITS_FILE"; then
        say limits "wrote $LIMITS_FILE (new logins; services: LimitNOFILE/LimitMEMLOCK)"
    else
        say limits "skipped: cannot write $LIMITS_FILE"
    fi
}

# --- commands ------------------------------------------------------------------------------------------
run_all() { # mode
    local s
    for s in $SETTINGS; do
        wanted "$s" || continue
        case "$s" in
            governor) governor "$1" ;;
            irq) irq "$1" ;;
            limits) limits "$1" ;;
            *) read -r p w <<<"${FILE_SETTING[$s]}"; file_setting "$1" "$s" "$p" "$w" ;;
        esac
    done
}

revert() {
    if [ ! -f "$STATE" ]; then echo "nothing to revert (no $STATE)"; return 0; fi
    local path val failed="" restored=0
    while IFS=$'\t' read -r path val; do
        case "$val" in
            @absent) rm -f "$path" && restored=$((restored + 1)) || failed="$failed$path"$'\t'"$val"$'\n' ;;
            @backup) cp -p "$STATE_DIR/limits.orig" "$path" && restored=$((restored + 1)) ||
                         failed="$failed$path"$'\t'"$val"$'\n' ;;
            *) if write_val "$path" "$val"; then restored=$((restored + 1))
               else echo "could not restore $path to '$val'"; failed="$failed$path"$'\t'"$val"$'\n'; fi ;;
        esac
    done < <(tac "$STATE")
    if [ -z "$failed" ]; then
        rm -f "$STATE" "$STATE_DIR/limits.orig"; rmdir "$STATE_DIR" 2>/dev/null
        echo "restored $restored values; state removed"
    else
        printf '%s' "$failed" > "$STATE"
        echo "restored $restored values; failures kept in $STATE"; return 1
    fi
}

values() { # every path this script may touch, with its value
    local p
    for p in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor /proc/irq/[0-9]*/smp_affinity_list \
             /proc/irq/default_smp_affinity "$LIMITS_FILE"; do
        [ -e "$p" ] && printf '%s=%s\n' "$p" "$(read_val "$p" | tr '\n' '|')"
    done
    for p in "${FILE_SETTING[@]}"; do p="${p% *}"; [ -e "$p" ] && printf '%s=%s\n' "$p" "$(read_val "$p")"; done
}

[ "$CMD" = status ] || [ "$CMD" = values ] || [ "$(id -u)" -eq 0 ] || { echo "$CMD needs root" >&2; exit 1; }
case "$CMD" in
    status) run_all status; [ -f "$STATE" ] && echo "(applied: previous values saved in $STATE)" ;;
    apply) run_all apply; [ -f "$STATE" ] && echo "previous values saved in $STATE; undo with: $0 revert" ;;
    revert) revert ;;
    values) values ;;
    *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
exit 0
