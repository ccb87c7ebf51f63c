# shellcheck shell=bash
# The demo's last act: the audit daemon. Sourced by vm-tests/scenarios/demo.sh, which calls
# demo_audit last, in the hardened sandbox (agent at /usr/local/bin/notebook-agent, config in
# /etc/notebook-agent/config.json with audit.endpoint_url = moto on the host side of the veth).
# Installs the unit from packaging/ (what on-start.sh does from the release tarball), with the
# platform's IMDS stand-in (a drop-in pointing the SDK at the fake IMDS), does some file work as
# ec2-user — in a shell, through jupyter-server (a notebook saved by the editor's API, code run in a
# real kernel that imports sagemaker_environment and reads data/, a command typed in a Jupyter
# terminal), a cp and an rm, and `aws s3 cp` of data/train.csv to moto — and ends by printing
# `status` and the last audit events read back from moto, each with the process (and kernel or
# terminal) that did it.

DEMO_AUDIT_REGION=us-east-1   # no audit.region in the demo's config: the notebook ARN's region
DEMO_AUDIT_STREAM=demo-notebook/audit
DEMO_SM=/home/ec2-user/SageMaker
DEMO_JUPYTER_CLIENT=/usr/local/lib/vm-tests/jupyter-client.py
DEMO_JUPYTER_PY=/home/ec2-user/anaconda3/envs/JupyterSystemEnv/bin/python

# The audit stream in moto, summarised by lib/audit-events.py (its ARGS: --last N, --expect RE).
demo_audit_events() {
  local json
  json=$(infra_aws --region "$DEMO_AUDIT_REGION" logs get-log-events \
    --log-group-name /aws/sagemaker/NotebookInstances --log-stream-name "$DEMO_AUDIT_STREAM" \
    --start-from-head --output json 2>&1) || { echo "$json"; return 1; }
  python3 "$HERE/lib/audit-events.py" "$@" <<<"$json"
}

# Poll (≤ 20 s) until every expected event is in moto; print the last 18 (the read audit's
# window is 5 s).
demo_audit_wait() {
  local t0=$SECONDS arg out
  local -a args=(--last 18)
  for arg in "$@"; do args+=(--expect "$arg"); done
  until out=$(demo_audit_events "${args[@]}"); do
    ((SECONDS - t0 < 20)) || { echo "$out"; echo "after 20 s"; return 1; }
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

# A process that exits at once is named when the agent read it in time; without the process-events
# connector (this sandbox: docs/WATCHER-DESIGN.md) it may be gone first, and the record says why.
# A program whose exec lost that race is '?[pid]', still with its user and parent.
DEMO_UNKNOWN='\? \(unknown: process [0-9]+ exited before it could be read|\?\[[0-9]+\] ec2-user .*parent=bash\['

# As ec2-user: cp and rm (instant), then the AWS CLI of the base conda env copies data/train.csv
# out to the data bucket in moto (a read of data/**, which audit.reads watches). Test credentials.
demo_copy_out() {
  sandbox_exec_timeout 90 su -s /bin/bash -c "cd $DEMO_SM && cp data/train.csv train-copy.csv &&
    rm train-copy.csv && export AWS_ACCESS_KEY_ID=AKIATESTTESTTESTTEST AWS_SECRET_ACCESS_KEY=test-secret-key \
      AWS_DEFAULT_REGION=$DEMO_AUDIT_REGION AWS_EC2_METADATA_DISABLED=true &&
    aws() { ~/anaconda3/bin/aws --endpoint-url $DEMO_MOTO \"\$@\"; } &&
    { aws s3 ls s3://demo-ml-data >/dev/null 2>&1 || aws s3 mb s3://demo-ml-data; } &&
    aws s3 cp data/train.csv s3://demo-ml-data/train.csv" ec2-user
}

# jupyter-client.py (lib/) as ec2-user, with the JupyterSystemEnv's python: kernel|save|terminal.
demo_jupyter() {
  sandbox_exec_timeout 90 su -s /bin/bash -c 'cd ~ && exec "$@"' -- ec2-user sandbox \
    "$DEMO_JUPYTER_PY" "$DEMO_JUPYTER_CLIENT" "$@"
}

# The code the demo runs in a kernel: the environment module, a read of data/, a result written.
DEMO_KERNEL_CODE='import sagemaker_environment as e
print("sagemaker_environment:", e.SAGEMAKER_NOTEBOOK_NAME, e.SAGEMAKER_VPC, e.SAGEMAKER_DATA_BUCKET)
rows = open("data/train.csv").read().splitlines()
open("results.csv", "w").write("rows,%d\n" % len(rows))
print("wrote results.csv from", len(rows), "rows")'

demo_audit() {
  demo_step "The audit daemon: file activity in SageMaker/ to CloudWatch Logs (moto on $INFRA_HOST_ADDR)"
  demo_say "Credentials: the SDK's default chain finds the fake IMDS (a systemd drop-in sets"
  demo_say "AWS_EC2_METADATA_SERVICE_ENDPOINT; on an instance it is 169.254.169.254)."
  demo_show "install the unit + drop-in; systemctl enable --now notebook-agent" demo_audit_install
  check audit-daemon-active demo_out_has '^active$'
  demo_show "as ec2-user: create, edit and rename a notebook, git clone a repo into SageMaker/, add data/train.csv" \
    sandbox_exec_as ec2-user bash -c "cd $DEMO_SM &&
      echo '{\"cells\": [], \"nbformat\": 4, \"nbformat_minor\": 5, \"metadata\": {}}' >demo.ipynb && sleep 0.3 &&
      echo >>demo.ipynb && sleep 0.3 && mv demo.ipynb demo-final.ipynb &&
      rm -rf /tmp/demo-repo && git init -q /tmp/demo-repo && cd /tmp/demo-repo &&
      echo '# demo' >README.md && git add README.md &&
      git -c user.name=ds -c user.email=ds@example.com commit -qm init &&
      cd $DEMO_SM && git clone -q /tmp/demo-repo demo-repo &&
      mkdir -p data && printf 'a,b\\n1,2\\n3,4\\n' >data/train.csv && ls $DEMO_SM"
  check audit-file-work demo_rc_is 0

  sandbox_exec install -d /usr/local/lib/vm-tests &&
    sandbox_exec sh -c "cat >$DEMO_JUPYTER_CLIENT" <"$HERE/lib/jupyter-client.py"
  demo_say "Through jupyter-server's API (127.0.0.1:8888 in the notebook), as a browser would:"
  demo_show "wait for jupyter-server (restarted by apply)" demo_jupyter_api
  demo_show "jupyter-client.py save analysis.ipynb …   # the editor saves a notebook (PUT /api/contents)" \
    demo_jupyter save analysis.ipynb "# Analysis of data/train.csv"
  check audit-notebook-saved demo_rc_is 0
  demo_show "jupyter-client.py kernel analysis.ipynb …   # run a cell in a real kernel (conda_python3)" \
    demo_jupyter kernel analysis.ipynb "$DEMO_KERNEL_CODE"
  check audit-kernel-ran demo_rc_is 0
  check audit-kernel-imports-sagemaker-environment demo_out_has '^sagemaker_environment: demo-notebook vpc-[0-9a-f]+ demo-ml-data$'
  DEMO_KERNEL_ID=$(sed -n 's/^kernel \([0-9a-f-]*\) .*/\1/p' <<<"$DEMO_OUT")
  demo_show "jupyter-client.py terminal 'cd ~/SageMaker && echo … > terminal-notes.txt'   # typed in a Jupyter terminal" \
    demo_jupyter terminal "cd ~/SageMaker && echo 'checked by hand' > terminal-notes.txt"
  check audit-terminal-ran demo_rc_is 0
  demo_show "as ec2-user: a cp and an rm that exit at once, then aws s3 cp data/train.csv to the data bucket (moto)" \
    demo_copy_out
  check audit-cp-rm-aws-s3-cp-ran demo_rc_is 0

  demo_show -x "notebook-agent status" demo_agent status
  check audit-status-exit-0 demo_rc_is 0
  check audit-status-names-fanotify demo_out_has '^Audit daemon +PASS +.*source fanotify'
  demo_say "Each event names the process behind it (and the Jupyter kernel or terminal it runs in);"
  demo_say "reads of data/** (audit.reads) are Read events, aggregated per process and file."
  demo_show "aws --endpoint-url $DEMO_MOTO logs get-log-events --log-group-name /aws/sagemaker/NotebookInstances --log-stream-name $DEMO_AUDIT_STREAM   # the last 18, summarised" \
    demo_audit_wait "Create +$DEMO_SM/demo\.ipynb" "Update +$DEMO_SM/demo\.ipynb" \
    "Rename +$DEMO_SM/demo\.ipynb -> $DEMO_SM/demo-final\.ipynb" \
    "Create +$DEMO_SM/demo-repo/README\.md .* by git\[[0-9]+\] ec2-user" \
    "(Create|Update) +$DEMO_SM/analysis\.ipynb .* by jupyter-server\[[0-9]+\] ec2-user" \
    "Create +$DEMO_SM/results\.csv .* by python[0-9.]*\[[0-9]+\] ec2-user .*kernel ${DEMO_KERNEL_ID:0:8}" \
    "Read +$DEMO_SM/data/train\.csv .* by python[0-9.]*\[[0-9]+\] ec2-user .*kernel ${DEMO_KERNEL_ID:0:8}" \
    "Create +$DEMO_SM/terminal-notes\.txt .* by bash\[[0-9]+\] ec2-user .*terminal " \
    "Create +$DEMO_SM/train-copy\.csv .* by (cp\[[0-9]+\] ec2-user .*parent=bash\[|$DEMO_UNKNOWN)" \
    "Delete +$DEMO_SM/train-copy\.csv .* by (rm\[[0-9]+\] ec2-user .*parent=bash\[|$DEMO_UNKNOWN)" \
    "Read +$DEMO_SM/data/train\.csv .* by aws\[[0-9]+\] ec2-user exe=/\S*python\S* parent=bash\[[0-9]+\] cmd=\S*python\S* \S*/bin/aws --endpoint-url \S+ s3 cp data/train\.csv"
  check audit-events-in-cloudwatch-with-their-actors demo_rc_is 0
}
