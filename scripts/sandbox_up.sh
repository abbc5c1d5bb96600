#!/usr/bin/env bash
# Set up the policy sandbox (docs/security.md, "Policy sandbox"): Debian's bubblewrap and the
# unprivileged system user the sandbox workers run as. Idempotent; run as root. `make sandbox`
# (part of `make test`) runs it. Exit status 0 only when a probe sandbox actually starts.
set -euo pipefail

USER_NAME=apportion-sandbox

if [ "$(id -u)" != 0 ]; then
	echo "sandbox_up.sh: must run as root (it installs bubblewrap and creates $USER_NAME)" >&2
	exit 1
fi

if ! command -v bwrap >/dev/null; then
	apt-get update -q >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
		--no-install-recommends bubblewrap >/dev/null
fi

if ! getent passwd "$USER_NAME" >/dev/null; then
	# a system user: no home, no shell, its own group, and no files of its own anywhere
	useradd --system --user-group --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin "$USER_NAME"
fi

# The probe: a new PID and network namespace, as the sandbox does it.
if ! bwrap --unshare-pid --unshare-net --die-with-parent --ro-bind /usr /usr \
	--symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 \
	--proc /proc --dev /dev -- /usr/bin/true; then
	echo "sandbox_up.sh: bwrap is installed but cannot create namespaces here" >&2
	exit 1
fi
echo "policy sandbox ready: $(bwrap --version), user $(id "$USER_NAME")"
