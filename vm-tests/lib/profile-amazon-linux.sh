#!/usr/bin/env bash
# Amazon Linux notebook profile, applied INSIDE the Debian rootfs (as root, by
# lib/rootfs.sh through `systemd-nspawn --pipe`, i.e. a chroot with /proc,
# /dev and the host network). Its contents are part of the rootfs cache key:
# editing this file rebuilds the profile layer on the next run.
#
# What it reproduces from a SageMaker notebook instance (see DESIGN.md,
# "Platform facts"): ec2-user uid 1000 in wheel+docker with cloud-init's
# passwordless sudo, resource metadata, an anaconda-like layout with the
# JupyterSystemEnv, and the jupyter-server unit that starts Jupyter through
# `su -l` (so /etc/profile.d applies to it).
set -euo pipefail

JUPYTER_SERVER_SPEC='jupyter-server==2.21.1'
# The kernel of SageMaker's conda_python3 (envs/python3), registered with the server's env.
IPYKERNEL_SPEC='ipykernel==6.29.5'
# The AWS CLI a notebook's base conda env carries (`aws s3 cp` of a dataset: issue 15's read
# audit); the same pin as tests/moto.sh.
AWSCLI_SPEC='awscli==1.46.3'
NOTEBOOK_NAME=demo-notebook
NOTEBOOK_ARN="arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/${NOTEBOOK_NAME}"
HOME_DIR=/home/ec2-user
CONDA=$HOME_DIR/anaconda3

export LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive

# --- users and groups (Amazon Linux has wheel; cloud-init adds docker) -----
getent group wheel >/dev/null || groupadd --system wheel
getent group docker >/dev/null || groupadd --system docker
if ! getent passwd ec2-user >/dev/null; then
  useradd --uid 1000 --user-group --create-home --home-dir "$HOME_DIR" \
    --shell /bin/bash --comment "EC2 Default User" ec2-user
fi
usermod -aG wheel,docker ec2-user
passwd -l ec2-user >/dev/null   # like AL: no password, key/su only

# --- sudo: cloud-init drop-in + AL's %wheel line ----------------------------
printf '%s\n' '# Created by cloud-init v. 22.2.2 (notebook-agent sandbox profile)' \
  '' '# User rules for ec2-user' 'ec2-user ALL=(ALL) NOPASSWD:ALL' \
  >/etc/sudoers.d/90-cloud-init-users
chmod 0440 /etc/sudoers.d/90-cloud-init-users
# sudo applies the LAST matching rule: like AL, the %wheel line must come
# before the include of sudoers.d, or it would override cloud-init's NOPASSWD.
if ! grep -qE '^%wheel[[:space:]]+ALL=\(ALL\)[[:space:]]+ALL' /etc/sudoers; then
  sed -i '/^[@#]includedir[[:space:]]/i ## Allows people in group wheel to run all commands (Amazon Linux)\n%wheel\tALL=(ALL)\tALL\n' /etc/sudoers
fi
grep -qE '^%wheel' /etc/sudoers
visudo -cf /etc/sudoers >/dev/null
visudo -cf /etc/sudoers.d/90-cloud-init-users >/dev/null

# --- SageMaker resource metadata ---------------------------------------------
install -d -m 0755 /opt/ml/metadata
printf '{"ResourceArn":"%s","ResourceName":"%s"}\n' "$NOTEBOOK_ARN" "$NOTEBOOK_NAME" \
  >/opt/ml/metadata/resource-metadata.json
chmod 0644 /opt/ml/metadata/resource-metadata.json

# --- anaconda-like layout: base + envs/python3 + envs/JupyterSystemEnv -------
for env in "$CONDA" "$CONDA/envs/python3" "$CONDA/envs/JupyterSystemEnv"; do
  [[ -x $env/bin/python ]] || python3 -m venv "$env"
done
"$CONDA/envs/JupyterSystemEnv/bin/pip" install --quiet --no-cache-dir \
  --disable-pip-version-check "$JUPYTER_SERVER_SPEC"
"$CONDA/envs/JupyterSystemEnv/bin/jupyter-server" --version >/dev/null
"$CONDA/envs/python3/bin/pip" install --quiet --no-cache-dir \
  --disable-pip-version-check "$IPYKERNEL_SPEC"
"$CONDA/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check "$AWSCLI_SPEC"
"$CONDA/bin/aws" --version >/dev/null
"$CONDA/envs/python3/bin/python" -m ipykernel install --prefix "$CONDA/envs/JupyterSystemEnv" \
  --name conda_python3 --display-name conda_python3 >/dev/null
# conda-ish shell init: base env on PATH for interactive and login shells.
if ! grep -q 'anaconda3/bin' "$HOME_DIR/.bashrc"; then
  printf '\n# >>> conda initialize (sandbox stand-in) >>>\nexport PATH="%s/bin:$PATH"\n# <<< conda initialize <<<\n' \
    "$CONDA" >>"$HOME_DIR/.bashrc"
fi
install -d "$HOME_DIR/SageMaker"
chown -R ec2-user:ec2-user "$HOME_DIR"

# --- jupyter-server unit, started through a login shell like SageMaker ------
cat >/etc/systemd/system/jupyter-server.service <<EOF
[Unit]
Description=Jupyter Server (SageMaker notebook profile)
After=network.target

[Service]
Type=simple
ExecStart=/bin/su -l ec2-user -c '$CONDA/envs/JupyterSystemEnv/bin/jupyter-server --ip=127.0.0.1 --port=8888 --no-browser --ServerApp.root_dir=$HOME_DIR/SageMaker --IdentityProvider.token= --ServerApp.password= --ServerApp.disable_check_xsrf=True'
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
systemctl enable jupyter-server.service >/dev/null 2>&1

# --- container hygiene: units that fail, hang or waste time under nspawn ----
systemctl mask \
  console-getty.service getty@.service serial-getty@.service \
  getty-static.service systemd-networkd-wait-online.service \
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer systemd-timesyncd.service \
  >/dev/null 2>&1
# No network config means no DHCP waits; the container runs --private-network.
echo "$NOTEBOOK_NAME" >/etc/hostname
cat >/etc/hosts <<EOF
127.0.0.1   localhost localhost.localdomain localhost4 localhost4.localdomain4
::1         localhost6 localhost6.localdomain6
127.0.1.1   $NOTEBOOK_NAME
EOF
: >/etc/machine-id   # fresh machine-id per boot, like a new instance
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.cache /tmp/* /var/tmp/*

cat >/etc/notebook-sandbox <<EOF
NAME="notebook-agent sandbox"
BASE="Debian GNU/Linux 12 (bookworm) rootfs (debootstrap minbase)"
PROFILE="Amazon Linux notebook (SageMaker notebook-al2023-v1 look-alike)"
PROFILE_USER=ec2-user
PROFILE_JUPYTER="$JUPYTER_SERVER_SPEC"
NOTE="Not Amazon Linux: no dnf/rpm/yum userland; paths, users, sudo and units mimic a notebook instance."
EOF
