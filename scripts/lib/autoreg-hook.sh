# shellcheck shell=sh
#
# autoreg-hook.sh - shared code of the shipped autoreg registration hooks.
#
# Sourced (not executed) by scripts/walrus, scripts/cc, scripts/sc and
# scripts/nc.  Before sourcing, a hook sets:
#
#   HOOK_ROLE      the role it registers (walrus, cc, sc, nc)
#   HOOK_RUNS_ON   the registrar that ships it (for --help only)
#   HOOK_CLUSTER   yes when nodes of this role belong to a cluster, so that
#                  AUTOREG_CLUSTER must be non-empty; no otherwise
#   HOOK_REGISTER  the cloud's own registration command, as text for --help
#
# defines hook_register(), the cloud's own registration call (a no-op as
# shipped: the registry file is its stand-in), and then calls:
#
#   autoreg_hook_main "$@"
#
# Every step is safe to repeat (see docs/hooks.md, "Idempotency"), so a hook
# that is run again after a failure or an interruption converges on the same
# result.
#
# Exit statuses: 0 registered, 64 usage error (missing or bad environment),
# 75 the node could not be reached or a remote step failed (retried by the
# daemon), 1 any other failure (retried as well).  The shipped hooks never
# exit 77 (decline): the daemon already applies the profile's policy
# (uniqueness, cluster membership, required roles) before it runs a hook.

EX_USAGE=64
EX_TEMPFAIL=75

# Variables a hook cannot work without, in the order they are reported.
AUTOREG_HOOK_REQUIRED="AUTOREG_ROLE AUTOREG_NODE_ID AUTOREG_IP AUTOREG_SSH_CONFIG AUTOREG_STATE_DIR AUTOREG_NODE_DIR"

# ---------------------------------------------------------------- output

autoreg_log() {
    printf '%s: %s\n' "$HOOK_ROLE" "$*"
}

autoreg_warn() {
    printf '%s: warning: %s\n' "$HOOK_ROLE" "$*" >&2
}

# autoreg_die STATUS MESSAGE...
autoreg_die() {
    _st=$1
    shift
    printf '%s: error: %s\n' "$HOOK_ROLE" "$*" >&2
    exit "$_st"
}

# ---------------------------------------------------------------- helpers

# autoreg_quote VALUE: VALUE as one single-quoted word for a POSIX shell.
autoreg_quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

# autoreg_safe_name VALUE: true when VALUE is a plain file name that needs no
# quoting anywhere (local shell, remote shell, scp): [A-Za-z0-9._-], not
# starting with '.' or '-'.
autoreg_safe_name() {
    case $1 in
        '' | .* | -* | *[!A-Za-z0-9._-]*) return 1 ;;
    esac
    return 0
}

# autoreg_safe_path VALUE: true when VALUE is an absolute path made of
# [A-Za-z0-9._/-] only, without '..' components.
autoreg_safe_path() {
    case $1 in
        /*) ;;
        *) return 1 ;;
    esac
    case $1 in
        *[!A-Za-z0-9._/-]* | */../* | */.. | */./* | */.) return 1 ;;
    esac
    return 0
}

# autoreg_field VALUE: VALUE with tabs, newlines and other control characters
# replaced by spaces, and '-' when empty, for one TSV column.
autoreg_field() {
    _f=$(printf '%s' "$1" | tr '[:cntrl:]' ' ')
    printf '%s' "${_f:--}"
}

autoreg_utc_now() {
    date -u +%Y-%m-%dT%H:%M:%SZ
}

# autoreg_ssh_script SCRIPT: run the POSIX sh SCRIPT on the node.  The script
# travels on ssh's standard input, so the node's login shell only ever parses
# "sh -s" and every value embedded with autoreg_quote reaches sh intact.
autoreg_ssh_script() {
    printf '%s\n' "$1" | ssh -F "$AUTOREG_SSH_CONFIG" node 'sh -s'
}

# autoreg_scp_failed DESTINATION SCP_ERRORS: say why scp failed, as exactly as
# can be told, and exit 75.  OpenSSH's scp copies over SFTP, so a node whose
# sshd has no "Subsystem sftp" line refuses every copy with nothing but
# "scp: Connection closed": ask the node's sshd for the subsystem to tell.
autoreg_scp_failed() {
    _why=$(printf '%s' "$2" | tr -s '\r\n' '  ' | sed 's/ *$//')
    _probe=$(ssh -F "$AUTOREG_SSH_CONFIG" -s node sftp </dev/null 2>&1 >/dev/null) || true
    case $_probe in
        *"subsystem request failed"*)
            autoreg_die "$EX_TEMPFAIL" "credentials: scp to $1 failed${_why:+ ($_why)}: the node's sshd offers no sftp subsystem, which scp needs; add 'Subsystem sftp internal-sftp' (or /usr/lib/openssh/sftp-server) to the node's sshd_config and reload sshd"
            ;;
    esac
    autoreg_die "$EX_TEMPFAIL" "credentials: scp to $1 failed${_why:+: $_why}"
}

# ---------------------------------------------------------------- usage

autoreg_usage() {
    if [ "$HOOK_CLUSTER" = yes ]; then
        _cluster_req="required (non-empty): the node's cluster"
        _cluster_ex=foo
    else
        _cluster_req="optional: empty for this role"
        _cluster_ex=
    fi
    cat <<EOF
Usage: $HOOK_ROLE [--help]

autoreg registration hook for role '$HOOK_ROLE', run by the autoreg daemon
on the $HOOK_RUNS_ON when a '$HOOK_ROLE' node has announced itself and its SSH
host key has been verified.  It takes no arguments: everything comes from
the environment (see docs/hooks.md).

What it does, one log line per step:
  1. copies every regular file of \$AUTOREG_CREDENTIALS_DIR to
     \$AUTOREG_NODE_DIR/credentials/ on the node (directory 0700, files 0600)
     and verifies them (mode, size and checksum) by listing them remotely;
  2. writes \$AUTOREG_NODE_DIR/registered-by on the node;
  3. records the node in \$AUTOREG_STATE_DIR/registry/$HOOK_ROLE.tsv on this
     host (once per node id), the stand-in for the cloud's own call:
       $HOOK_REGISTER
Every step is safe to repeat.  The node's sshd must offer the sftp subsystem
("Subsystem sftp" in its sshd_config): scp copies over SFTP.

Required environment:
  AUTOREG_ROLE          the node's role (normally '$HOOK_ROLE')
  AUTOREG_NODE_ID       the node's stable id
  AUTOREG_IP            the node's announced preferred address
  AUTOREG_SSH_CONFIG    ssh_config file defining 'Host node' (HostName, Port,
                        User, IdentityFile, UserKnownHostsFile, ...)
  AUTOREG_STATE_DIR     the registrar's state directory (registry/ lives here)
  AUTOREG_NODE_DIR      autoreg's directory on the node (absolute path)
  AUTOREG_CLUSTER       $_cluster_req

Optional environment:
  AUTOREG_NAME               the node's host name (registry column; '-' if empty)
  AUTOREG_CREDENTIALS_DIR    files handed to every node
                             (default /etc/autoreg/credentials; may be missing)
  AUTOREG_REGISTRAR_ROLE     this registrar's role   (written to registered-by)
  AUTOREG_REGISTRAR_CLUSTER  this registrar's cluster (written to registered-by)
  AUTOREG_ATTEMPT, AUTOREG_RESUMED, AUTOREG_HOOK_VERSION  (logged)
  AUTOREG_HOOK_LIB           path of autoreg-hook.sh, for running by hand
                             (default: lib/ next to the real path of this
                             script, or next to the path it was run by, then
                             /usr/share/autoreg/hooks/lib/)

Exit status: 0 registered; 64 missing or bad environment; 75 the node could
not be reached or a remote step failed; 1 other failure.  The daemon retries
any non-zero status other than 77.

Example, by hand (the node at 198.18.0.5 accepts root's key /root/.ssh/id_ed25519):
ssh-keyscan -t ed25519 198.18.0.5 > /tmp/kh    # then compare with: ssh-keygen -lf /tmp/kh
cat > /tmp/ssh_config <<'CFG'
Host node
    HostName 198.18.0.5
    Port 22
    User root
    IdentityFile /root/.ssh/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile /tmp/kh
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 10
CFG
env -i PATH="\$PATH" AUTOREG_HOOK_VERSION=1 AUTOREG_ROLE=$HOOK_ROLE \\
    AUTOREG_CLUSTER=$_cluster_ex AUTOREG_NODE_ID=n1abc AUTOREG_NAME=node1 \\
    AUTOREG_IP=198.18.0.5 AUTOREG_SSH_CONFIG=/tmp/ssh_config \\
    AUTOREG_STATE_DIR=/tmp/autoreg-state AUTOREG_NODE_DIR=/var/lib/autoreg/node \\
    AUTOREG_CREDENTIALS_DIR=/etc/autoreg/credentials \\
    $0
EOF
}

# ---------------------------------------------------------------- checks

autoreg_check_env() {
    _missing=
    for _v in $AUTOREG_HOOK_REQUIRED; do
        eval "_val=\${$_v:-}"
        # shellcheck disable=SC2154  # _val is assigned by the eval above
        [ -n "$_val" ] || _missing="$_missing $_v"
    done
    if [ "$HOOK_CLUSTER" = yes ] && [ -z "${AUTOREG_CLUSTER:-}" ]; then
        _missing="$_missing AUTOREG_CLUSTER"
    fi
    if [ -n "$_missing" ]; then
        printf '%s: error: missing required environment variable(s):%s\n' \
            "$HOOK_ROLE" "$_missing" >&2
        printf '%s: run "%s --help" for the environment this hook needs\n' \
            "$HOOK_ROLE" "$0" >&2
        exit "$EX_USAGE"
    fi

    if [ ! -f "$AUTOREG_SSH_CONFIG" ] || [ ! -r "$AUTOREG_SSH_CONFIG" ]; then
        autoreg_die "$EX_USAGE" "AUTOREG_SSH_CONFIG=$AUTOREG_SSH_CONFIG is not a readable file"
    fi
    autoreg_safe_path "$AUTOREG_NODE_DIR" ||
        autoreg_die "$EX_USAGE" "AUTOREG_NODE_DIR=$AUTOREG_NODE_DIR must be an absolute path of [A-Za-z0-9._/-]"
    case $AUTOREG_STATE_DIR in
        /*) ;;
        *) autoreg_die "$EX_USAGE" "AUTOREG_STATE_DIR=$AUTOREG_STATE_DIR must be an absolute path" ;;
    esac
    autoreg_safe_name "$AUTOREG_ROLE" ||
        autoreg_die "$EX_USAGE" "AUTOREG_ROLE=$AUTOREG_ROLE is not a valid role name"

    if [ -n "${AUTOREG_HOOK_VERSION:-}" ] && [ "$AUTOREG_HOOK_VERSION" != 1 ]; then
        autoreg_warn "written for hook contract version 1, daemon speaks version $AUTOREG_HOOK_VERSION"
    fi
    if [ "$AUTOREG_ROLE" != "$HOOK_ROLE" ]; then
        autoreg_warn "this is the '$HOOK_ROLE' hook but AUTOREG_ROLE=$AUTOREG_ROLE; recording it as '$AUTOREG_ROLE'"
    fi
}

# ---------------------------------------------------------------- steps

# Step 1: credentials.  Files are uploaded into credentials/.incoming/, set to
# 0600 there and then renamed into place, so a node never sees a half-written
# credential under its final name, and a repeated run simply overwrites.
autoreg_step_credentials() {
    _src=${AUTOREG_CREDENTIALS_DIR:-/etc/autoreg/credentials}
    _dest=$AUTOREG_NODE_DIR/credentials

    if [ ! -d "$_src" ]; then
        autoreg_log "credentials: nothing to copy ($_src does not exist)"
        return 0
    fi
    _src=$(cd "$_src" && pwd -P) ||
        autoreg_die 1 "credentials: cannot enter $_src"

    _names=
    _count=0
    for _p in "$_src"/*; do
        [ -e "$_p" ] || [ -L "$_p" ] || continue # the unmatched glob of an empty dir
        _n=${_p##*/}
        if [ ! -f "$_p" ]; then
            autoreg_warn "credentials: skipping $_p (not a regular file)"
            continue
        fi
        if ! autoreg_safe_name "$_n"; then
            autoreg_warn "credentials: skipping '$_n' (file names must be [A-Za-z0-9._-])"
            continue
        fi
        [ -r "$_p" ] || autoreg_die 1 "credentials: cannot read $_p"
        _names="$_names $_n"
        _count=$((_count + 1))
    done
    if [ "$_count" -eq 0 ]; then
        autoreg_log "credentials: nothing to copy ($_src has no regular files)"
        return 0
    fi

    # The expected "name size checksum" lines, computed locally.
    _expected=
    for _n in $_names; do
        _ck=$(cksum <"$_src/$_n") || autoreg_die 1 "credentials: cannot read $_src/$_n"
        _expected="$_expected$_n ${_ck#* } ${_ck%% *}
"
    done

    _qdest=$(autoreg_quote "$_dest")
    autoreg_ssh_script "set -eu
mkdir -p $(autoreg_quote "$AUTOREG_NODE_DIR")
umask 077
mkdir -p $_qdest
chmod 0700 $_qdest
rm -rf $_qdest/.incoming
mkdir $_qdest/.incoming" ||
        autoreg_die "$EX_TEMPFAIL" "credentials: cannot create $_dest on the node (ssh -F $AUTOREG_SSH_CONFIG node failed)"

    _files=
    for _n in $_names; do
        _files="$_files ./$_n" # ./ so that scp never reads a name as host:path
    done
    # shellcheck disable=SC2086  # $_files: safe names only, split on purpose
    _scp_err=$( (cd "$_src" && scp -F "$AUTOREG_SSH_CONFIG" -q $_files "node:$_dest/.incoming/") 2>&1 >/dev/null) ||
        autoreg_scp_failed "node:$_dest/.incoming/" "$_scp_err"

    # Make them 0600, move them into place, then list what is really there.
    _listing=$(autoreg_ssh_script "set -eu
cd $_qdest
for n in $_names; do
    chmod 0600 .incoming/\$n
    mv -f .incoming/\$n \$n
done
rmdir .incoming 2>/dev/null || true
for n in $_names; do
    ck=\$(cksum <\$n)
    m=\$(ls -ln \$n | cut -c1-10)
    printf '%s %s %s %s\n' \$n \"\${ck#* }\" \"\${ck%% *}\" \$m
done") ||
        autoreg_die "$EX_TEMPFAIL" "credentials: cannot install or list the files in $_dest on the node"

    # Compare with what was sent: same names, sizes, checksums; mode 0600.
    _bad=
    for _n in $_names; do
        _want=$(printf '%s\n' "$_expected" | awk -v n="$_n" '$1 == n { print $2, $3 }')
        _got=$(printf '%s\n' "$_listing" | awk -v n="$_n" '$1 == n { print $2, $3 }')
        _mode=$(printf '%s\n' "$_listing" | awk -v n="$_n" '$1 == n { print $4 }')
        if [ -z "$_got" ] || [ "$_got" != "$_want" ]; then
            _bad="$_bad $_n(content)"
        elif [ "$_mode" != "-rw-------" ]; then
            _bad="$_bad $_n(mode $_mode)"
        fi
    done
    [ -z "$_bad" ] ||
        autoreg_die 1 "credentials: verification failed on the node for:$_bad"
    autoreg_log "credentials: copied and verified $_count file(s) in node:$_dest (mode 0600):$_names"
}

# Step 2: registered-by, written to a temporary file and renamed into place.
autoreg_step_registered_by() {
    _file=$AUTOREG_NODE_DIR/registered-by
    _content="# Written by the autoreg '$HOOK_ROLE' hook on the registrar; informational.
registrar_role=${AUTOREG_REGISTRAR_ROLE:-}
registrar_cluster=${AUTOREG_REGISTRAR_CLUSTER:-}
registrar_host=$AUTOREG_CONTROLLER_HOST
role=$AUTOREG_ROLE
cluster=${AUTOREG_CLUSTER:-}
node_id=$AUTOREG_NODE_ID
time=$AUTOREG_NOW"
    _qdir=$(autoreg_quote "$AUTOREG_NODE_DIR")
    _qfile=$(autoreg_quote "$_file")
    autoreg_ssh_script "set -eu
mkdir -p $_qdir
tmp=$_qfile.tmp.\$\$
printf '%s\n' $(autoreg_quote "$_content") >\"\$tmp\"
chmod 0644 \"\$tmp\"
mv -f \"\$tmp\" $_qfile" ||
        autoreg_die "$EX_TEMPFAIL" "registered-by: cannot write node:$_file"
    autoreg_log "registered-by: wrote node:$_file (registrar ${AUTOREG_REGISTRAR_ROLE:-?}${AUTOREG_REGISTRAR_CLUSTER:+/$AUTOREG_REGISTRAR_CLUSTER} on $AUTOREG_CONTROLLER_HOST, $AUTOREG_NOW)"
}

# Step 3: the registry line, appended at most once per node id.
autoreg_registry_append() {
    # Runs with the registry file open on fd 9 (and locked when possible).
    if awk -F '\t' -v id="$AUTOREG_NODE_ID" '$2 == id { found = 1 } END { exit !found }' "$_tsv"; then
        autoreg_log "registry: node $AUTOREG_NODE_ID already recorded in $_tsv, nothing to add"
        return 0
    fi
    # The cloud's own registration call, defined by each hook (a no-op as
    # shipped: the line appended below stands in for it).  It runs under the
    # lock and only while the node is not recorded yet; when it fails nothing
    # is recorded and the daemon retries.
    hook_register 9>&- || autoreg_die 1 "registry: registration command failed (status $?)"
    _line=$(printf '%s\t%s\t%s\t%s\t%s' \
        "$(autoreg_field "$AUTOREG_NOW")" \
        "$(autoreg_field "$AUTOREG_NODE_ID")" \
        "$(autoreg_field "${AUTOREG_NAME:-}")" \
        "$(autoreg_field "$AUTOREG_IP")" \
        "$(autoreg_field "${AUTOREG_CLUSTER:-}")")
    if [ ! -s "$_tsv" ]; then
        _line=$(printf '# time\tnode_id\tname\tip\tcluster\n%s' "$_line")
    fi
    # One write(2) of the whole line (or header and line), appended.
    printf '%s\n' "$_line" >&9 || autoreg_die 1 "registry: cannot write $_tsv"
    autoreg_log "registry: recorded node $AUTOREG_NODE_ID (${AUTOREG_NAME:-no name}, $AUTOREG_IP${AUTOREG_CLUSTER:+, cluster $AUTOREG_CLUSTER}) in $_tsv"
}

autoreg_step_registry() {
    _dir=$AUTOREG_STATE_DIR/registry
    _tsv=$_dir/$AUTOREG_ROLE.tsv
    mkdir -p "$_dir" || autoreg_die 1 "registry: cannot create $_dir"
    touch "$_tsv" || autoreg_die 1 "registry: cannot write $_tsv"

    (
        if command -v flock >/dev/null 2>&1; then
            flock -w 120 9 || autoreg_die 1 "registry: timed out waiting for the lock on $_tsv"
        else
            autoreg_warn "registry: flock not found, appending without a lock"
        fi
        autoreg_registry_append
    ) 9>>"$_tsv" # set -e: a failure in here ends the hook with its status
}

# ---------------------------------------------------------------- main

autoreg_hook_main() {
    case ${1:-} in
        -h | --help)
            autoreg_usage
            exit 0
            ;;
        '') ;;
        *)
            printf '%s: error: unexpected argument: %s (this hook takes none; see --help)\n' \
                "$HOOK_ROLE" "$1" >&2
            exit "$EX_USAGE"
            ;;
    esac

    autoreg_check_env

    AUTOREG_CONTROLLER_HOST=$(uname -n)
    AUTOREG_NOW=$(autoreg_utc_now)

    _what="node $AUTOREG_NODE_ID (${AUTOREG_NAME:-no name}, $AUTOREG_IP${AUTOREG_CLUSTER:+, cluster $AUTOREG_CLUSTER})"
    _how="attempt ${AUTOREG_ATTEMPT:-1}, path ${AUTOREG_PATH:-direct}"
    if [ "${AUTOREG_RESUMED:-0}" = 1 ]; then
        _how="$_how, resuming an interrupted run: every step is repeated, each is safe to repeat"
    fi
    autoreg_log "registering $AUTOREG_ROLE $_what ($_how)"

    autoreg_step_credentials
    autoreg_step_registered_by
    autoreg_step_registry
    autoreg_log "done: $AUTOREG_ROLE $AUTOREG_NODE_ID registered by $AUTOREG_CONTROLLER_HOST"
}
