#!/bin/sh
# %post: make systemd see the new or updated unit; enabling and starting it is the lifecycle
# script's decision (on-start enables it after `notebook-agent apply`). No systemd running
# (an image build, a chroot): nothing to reload.
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || :
fi
