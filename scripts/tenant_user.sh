#!/usr/bin/env bash
# Create the unprivileged OS user that Apportion's jobs run as (docs/security.md).
#
#   JOB_USER   the user to create (default apportion-jobs; the server's job_user setting)
#   JOB_HOME   its home directory (default /var/lib/$JOB_USER)
#
# A system user with its own group, no password, no login shell and no other groups.
# Idempotent: an existing user is checked (not root, not in group root) and left as it is.
# Must run as root.
set -euo pipefail

JOB_USER=${JOB_USER:-apportion-jobs}
JOB_HOME=${JOB_HOME:-/var/lib/$JOB_USER}
die() { echo "tenant_user: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it creates an OS user)"
[[ "$JOB_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "JOB_USER must be a POSIX user name, got '$JOB_USER'"
[[ "$JOB_HOME" =~ ^/[A-Za-z0-9_./-]+$ ]] || die "JOB_HOME must be an absolute path of [A-Za-z0-9_./-]"
export PATH="$PATH:/usr/sbin:/sbin"

if ! id -u "$JOB_USER" >/dev/null 2>&1; then
  useradd --system --user-group --no-log-init --home-dir "$JOB_HOME" --create-home \
    --shell /usr/sbin/nologin --comment "Apportion jobs" "$JOB_USER"
fi
[ "$(id -u "$JOB_USER")" != 0 ] || die "$JOB_USER is root; jobs never run as root"
for g in $(id -G "$JOB_USER"); do
  [ "$g" != 0 ] || die "$JOB_USER is in group root; remove it from that group"
done
install -d -o "$JOB_USER" -g "$(id -gn "$JOB_USER")" -m 0700 "$JOB_HOME"
echo "tenant_user: jobs run as $JOB_USER (uid $(id -u "$JOB_USER"), home $JOB_HOME)"
