#!/bin/bash
# notebook-agent: SageMaker notebook lifecycle configuration, OnCreate (runs once, as root, when
# the notebook instance is created; OnStart runs right after it, and on every later start).
#
# Deliberately does nothing. Everything the agent installs lives on the system volume (/usr/local,
# /etc, /var), which is replaced on every stop/start, so it must be installed by on-start.sh every
# time; doing it here as well would only run it twice on the first boot. Pre-fetching the release
# into /home/ec2-user/SageMaker (the only volume that survives) would save a second or two per start
# but put the artifact where the notebook user can write, and on-start would still have to fetch
# and verify it; it is not worth a second code path. The spool directory the audit daemon keeps on
# that volume is created by the agent itself, root-owned 0700.
# Attach this script anyway: a lifecycle configuration with only OnStart is fine too, and this one
# leaves a line in <notebook>/LifecycleConfigOnCreate saying so.
set -euo pipefail
printf '%s notebook-agent on-create: nothing to do on creation; on-start.sh installs and hardens on every start\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
