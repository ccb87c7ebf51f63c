#!/bin/sh
# %preun: on erase only ($1 = 0; an upgrade is 1), stop the daemon (it drains its spool for up
# to 20 s) and disable it before its files go.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
  systemctl --no-reload disable --now notebook-agent.service >/dev/null 2>&1 || :
fi
