#!/usr/bin/env bash
# Runs on each TPU VM worker, called by launch/tpu_vm.sh through `gcloud ... ssh`.
#
#   tpu_worker.sh install PYTHON_VERSION   # uv, a uv-managed Python and the package in a venv,
#                                          # at launch/constraints.txt's versions
#   tpu_worker.sh start MAIN_FLAGS...      # (re)start main.py as the systemd service below
#   tpu_worker.sh stop                     # SIGTERM (checkpoint, exit 75); no restart, not at boot
#   tpu_worker.sh status                   # the service's state, restarts and last log lines
#   tpu_worker.sh unit                     # print the systemd unit `start` installs
#   tpu_worker.sh restarts EXIT_CODE       # print restart or stop: the unit's decision
#
# The service restarts main.py on every exit but 0 (finished) and 130 (stopped by the user):
# 75 (checkpoint saved after SIGTERM on any host), a crash, a host that lost its peers. It
# starts again when the VM boots (after a maintenance event); main.py resumes from the
# workdir's newest checkpoint, and waits up to JAX_INITIALIZATION_TIMEOUT s for its peers.
set -euo pipefail

CODE=$HOME/bigbigan_jax
VENV=$HOME/bigbigan_venv
RUN_DIR=$HOME/bigbigan_run
SERVICE=bigbigan-train
NO_RESTART_CODES='0 130'  # training_command: finished, stopped by the user.
INIT_TIMEOUT_S=1800  # A rebooting peer (maintenance) rejoins within this.

install() {
  python3 -m pip install --user --quiet --upgrade uv
  local uv=$HOME/.local/bin/uv
  if [[ ! -x $VENV/bin/python ]]; then
    "$uv" venv --quiet --python "$1" "$VENV"
  fi
  "$uv" pip install --quiet --python "$VENV/bin/python" -c "$CODE/launch/constraints.txt" \
    -e "${CODE}[tpu]"
}

unit() {
  cat <<EOF
[Unit]
Description=bigbigan_jax training ($RUN_DIR/train.sh)
Wants=network-online.target
After=network-online.target
# 10 starts in 6 hours: each waits up to ${INIT_TIMEOUT_S}s for its peers, so a long
# maintenance is survived; a run that fails at once stops after about 10 minutes.
StartLimitIntervalSec=21600
StartLimitBurst=10

[Service]
User=$USER
WorkingDirectory=$CODE
Environment=JAX_INITIALIZATION_TIMEOUT=$INIT_TIMEOUT_S
ExecStart=/bin/bash $RUN_DIR/train.sh
Restart=always
RestartPreventExitStatus=$NO_RESTART_CODES
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

write_service() {
  unit | sudo tee "/etc/systemd/system/$SERVICE.service" >/dev/null
}

# What Restart=always with RestartPreventExitStatus does with main.py's exit code.
restarts() {
  local code
  for code in $NO_RESTART_CODES; do
    if [[ $1 == "$code" ]]; then
      echo stop
      return
    fi
  done
  echo restart
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
  unit) unit ;;
  restarts) restarts "${2:?restarts needs an exit code, e.g. 75}" ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
