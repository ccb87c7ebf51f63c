# shellcheck shell=bash
# PLACEHOLDER, owned by the audit engineers (issues 4/5): replace the body of
# demo_audit() once `notebook-agent watch` exists. Sourced by
# vm-tests/scenarios/demo.sh, which calls demo_audit last, in the hardened
# sandbox (agent at /usr/local/bin/notebook-agent, config in
# /etc/notebook-agent/config.json). Available: demo_step, demo_say, demo_show,
# demo_rc_is, demo_out_has, check, sandbox_exec, sandbox_exec_as,
# sandbox_login_as, $SANDBOX_VOLUME (the host side of /home/ec2-user/SageMaker).
# Keep it loopback-only (the sandbox has no other network): a CloudWatch stand-in
# has to run inside the sandbox on 127.0.0.1.

demo_audit() {
  demo_step "Audit events (placeholder)"
  demo_say "Audit events: not yet — \`notebook-agent watch\` lands with issue 4/5"
}
