#!/usr/bin/env bash
# Runs on each TPU VM worker, called by launch/tpu_vm.sh through `gcloud ... ssh`.
#
#   tpu_worker.sh install PYTHON_VERSION   # uv, a uv-managed Python and the package in a venv
#   tpu_worker.sh start MAIN_FLAGS...      # (re)start main.py as the systemd service below
#   tpu_worker.sh stop                     # SIGTERM (checkpoint, exit 0); no restart, not at boot
#   tpu_worker.sh status                   # the service's state, restarts and last log lines
#
# The service restarts main.py after a failure (non-zero exit: a crash, or a host that lost its
# peers) and starts it again when the VM boots (after a maintenance event); main.py resumes
# from the workdir's newest checkpoint. Exit 0 means finished or stopped: no restart.
set -euo pipefail

CODE=$HOME/bigbigan_jax
VENV=$HOME/bigbigan_venv
RUN_DIR=$HOME/bigbigan_run
SERVICE=bigbigan-train

install() {
  python3 -m pip install --user --quiet --upgrade uv
  local uv=$HOME/.local/bin/uv
  if [[ ! -x $VENV/bin/python ]]; then
    "$uv" venv --quiet --python "$1" "$VENV"
  fi
  "$uv" pip install --quiet --python "$VENV/bin/python" -e "${CODE}[tpu]"
}

write_service() {
  sudo tee "/etc/systemd/system/$SERVICE.service" >/dev/null <<EOF
[Unit]
Description=bigbigan_jax training ($RUN_DIR/train.sh)
Wants=network-online.target
After=network-online.target
# A failing run stops being restarted after 5 starts in an hour.
StartLimitIntervalSec=3600
StartLimitBurst=5

[Service]
User=$USER
WorkingDirectory=$CODE
ExecStart=/bin/bash $RUN_DIR/train.sh
Restart=on-failure
RestartSec=60
# SIGTERM to main.py only; it saves a checkpoint before exiting.
KillMode=mixed
TimeoutStopSec=600
StandardOutput=append:$RUN_DIR/train.log
StandardError=inherit

[Install]
WantedBy=multi-user.target
EOF
}

start() {
  mkdir -p "$RUN_DIR"
  local command
  printf -v command ' %q' "$@"
  printf '#!/usr/bin/env bash\nexec %q -m bigbigan_jax.main%s\n' "$VENV/bin/python" "$command" \
    > "$RUN_DIR/train.sh"
  write_service
  sudo systemctl daemon-reload
  sudo systemctl reset-failed "$SERVICE" 2>/dev/null || true
  sudo systemctl enable --quiet "$SERVICE"
  sudo systemctl restart "$SERVICE"
  echo "$(hostname): started $SERVICE; log: $RUN_DIR/train.log"
}

stop() {
  sudo systemctl disable --now --quiet "$SERVICE" 2>/dev/null || true  # Also when never started.
  echo "$(hostname): $SERVICE $(systemctl is-active "$SERVICE" || true)"
}

status() {
  echo "$(hostname): $SERVICE $(systemctl is-active "$SERVICE" || true)," \
       "$(systemctl show -p NRestarts --value "$SERVICE") restarts"
  tail -n 3 "$RUN_DIR/train.log" 2>/dev/null || true
}

case ${1:-} in
  install) install "${2:?install needs a Python version, e.g. 3.12}" ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
