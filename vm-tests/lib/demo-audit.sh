# shellcheck shell=bash
# The demo's last act: the audit daemon. Sourced by vm-tests/scenarios/demo.sh, which calls
# demo_audit last, in the hardened sandbox (agent at /usr/local/bin/notebook-agent, config in
# /etc/notebook-agent/config.json with audit.endpoint_url = moto on the host side of the veth).
# Installs the unit from packaging/ (what on-start.sh does from the release tarball), with the
# platform's IMDS stand-in (a drop-in pointing the SDK at the fake IMDS), does some file work as
# ec2-user and ends by printing `status` and the last audit events read back from moto.

DEMO_AUDIT_REGION=us-east-1   # no audit.region in the demo's config: the notebook ARN's region
DEMO_AUDIT_STREAM=demo-notebook/audit
DEMO_SM=/home/ec2-user/SageMaker

# The audit stream in moto, summarised by lib/audit-events.py (its ARGS: --last N, --expect RE).
demo_audit_events() {
  local json
  json=$(infra_aws --region "$DEMO_AUDIT_REGION" logs get-log-events \
    --log-group-name /aws/sagemaker/NotebookInstances --log-stream-name "$DEMO_AUDIT_STREAM" \
    --start-from-head --output json 2>&1) || { echo "$json"; return 1; }
  python3 "$HERE/lib/audit-events.py" "$@" <<<"$json"
}

# Poll (≤ 5 s) until every expected event is in moto; print the last 10.
demo_audit_wait() {
  local t0=$SECONDS arg out
  local -a args=(--last 10)
  for arg in "$@"; do args+=(--expect "$arg"); done
  until out=$(demo_audit_events "${args[@]}"); do
    ((SECONDS - t0 < 5)) || { echo "$out"; return 1; }
    sleep 0.25
  done
  echo "$out"
}

demo_audit_install() {
  sandbox_exec sh -c 'cat >/etc/systemd/system/notebook-agent.service' <"$HERE/../packaging/notebook-agent.service" &&
    sandbox_exec sh -c 'mkdir -p /etc/systemd/system/notebook-agent.service.d &&
      cat >/etc/systemd/system/notebook-agent.service.d/10-sandbox-imds.conf' <<EOF &&
[Service]
Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT=http://$INFRA_HOST_ADDR:$INFRA_IMDS_PORT
EOF
    sandbox_exec systemctl daemon-reload &&
    sandbox_exec systemctl enable --now notebook-agent.service 2>&1 &&
    sleep 1 && sandbox_exec systemctl is-active notebook-agent.service
}

demo_audit() {
  demo_step "The audit daemon: file activity in SageMaker/ to CloudWatch Logs (moto on $INFRA_HOST_ADDR)"
  demo_say "Credentials: the SDK's default chain finds the fake IMDS (a systemd drop-in sets"
  demo_say "AWS_EC2_METADATA_SERVICE_ENDPOINT; on an instance it is 169.254.169.254)."
  demo_show "install the unit + drop-in; systemctl enable --now notebook-agent" demo_audit_install
  check audit-daemon-active demo_out_has '^active$'
  demo_show "as ec2-user: create, edit and rename a notebook, then git clone a repo into SageMaker/" \
    sandbox_exec_as ec2-user bash -c "cd $DEMO_SM &&
      echo '{\"cells\": [], \"nbformat\": 4, \"nbformat_minor\": 5, \"metadata\": {}}' >demo.ipynb && sleep 0.3 &&
      echo >>demo.ipynb && sleep 0.3 && mv demo.ipynb demo-final.ipynb &&
      rm -rf /tmp/demo-repo && git init -q /tmp/demo-repo && cd /tmp/demo-repo &&
      echo '# demo' >README.md && git add README.md &&
      git -c user.name=ds -c user.email=ds@example.com commit -qm init &&
      cd $DEMO_SM && git clone -q /tmp/demo-repo demo-repo && ls $DEMO_SM"
  check audit-file-work demo_rc_is 0
  demo_show -x "notebook-agent status" demo_agent status
  check audit-status-exit-0 demo_rc_is 0
  demo_show "aws --endpoint-url $DEMO_MOTO logs get-log-events --log-group-name /aws/sagemaker/NotebookInstances --log-stream-name $DEMO_AUDIT_STREAM   # the last 10, summarised" \
    demo_audit_wait "Create +$DEMO_SM/demo\.ipynb" "Update +$DEMO_SM/demo\.ipynb" \
    "Rename +$DEMO_SM/demo\.ipynb -> $DEMO_SM/demo-final\.ipynb" "Create +$DEMO_SM/demo-repo/README\.md"
  check audit-events-in-cloudwatch-within-5s demo_rc_is 0
}
