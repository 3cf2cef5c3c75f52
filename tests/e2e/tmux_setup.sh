#!/usr/bin/env bash
# End-to-end in tmux (issue 13): the Setup screen as a newcomer drives it, at 80x24 (xterm-256color)
# and 200x60 (screen), on the demo checkpoint and tensors.
#   1. presets: F3, Tab to Rank, type 8, Ctrl+L, pick quick_test, Enter; the overwrite question comes
#      (it names Rank, which was edited), y loads it, and the form says "quick_test: N fields changed".
#   2. readiness: a remembered dataset folder that does not exist: Setup is not "Ready", Ctrl+S is
#      refused with the reason, and no run folder is created under the output root.
#
#   bash tests/e2e/tmux_setup.sh            (SIDESTEP=path/to/sidestep to test another install;
#                                            SIZES="80 24 xterm-256color" for one size only)
#
# Captures go under $OUT (default: a temp dir); exits non-zero on any failure.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
SIDESTEP=${SIDESTEP:-$REPO/.venv/bin/sidestep}
PY=${PY:-$REPO/.venv/bin/python}
OUT=${OUT:-$(mktemp -d -t sidestep-setup-XXXX)}
DEMO=${SIDESTEP_DEMO_ROOT:-$OUT/demo}
SESSION=sidestep-setup-$$

command -v tmux >/dev/null || { echo "SKIP: tmux not installed"; exit 0; }
fail() { echo "FAIL: $*"; tmux kill-session -t "$SESSION" 2>/dev/null || true; exit 1; }
pass() { echo "ok: $*"; }
trap 'tmux kill-session -t "$SESSION" 2>/dev/null || true' EXIT

# wait_for TEXT SECONDS CAPTURE: poll the pane until it shows TEXT
wait_for() {
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    tmux capture-pane -p -t "$SESSION" > "$3" 2>/dev/null || true
    grep -qF -- "$1" "$3" && return 0
    sleep 0.5
  done
  return 1
}

# open TAG W H TERM DATASET: the TUI on the demo checkpoint, with DATASET as the remembered dataset
open_tui() {
  local cfg=$OUT/config-$1
  rm -rf "$cfg"; mkdir -p "$cfg"
  printf '{"checkpoint_root": "%s", "output_root": "%s", "last_dataset_dir": "%s"}\n' "$CKPT" "$RUNS" "$5" > "$cfg/settings.json"
  tmux new-session -d -s "$SESSION" -x "$2" -y "$3" "cd '$REPO' && SIDESTEP_CONFIG_DIR='$cfg' TERM=$4 '$SIDESTEP'; sleep 60"
  wait_for "sidestep-demo" 60 "$OUT/$1-0-models.txt" || fail "$1: the Models screen did not list the demo model"
  tmux send-keys -t "$SESSION" F3
}

close_tui() {
  tmux send-keys -t "$SESSION" C-q
  sleep 2
  tmux kill-session -t "$SESSION" 2>/dev/null || true
}

mkdir -p "$OUT"
echo "output: $OUT"
echo "demo checkpoint and tensors (written once) in $DEMO ..."
"$PY" -m engine.cli demo --setup-only --root "$DEMO" > "$OUT/setup.json"
CKPT=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["checkpoint_dir"])' "$OUT/setup.json")
DATA=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["dataset_dir"])' "$OUT/setup.json")
RUNS=$OUT/runs

IFS=, read -r -a sizes <<< "${SIZES:-80 24 xterm-256color,200 60 screen}"
for run in "${sizes[@]}"; do
  set -- $run
  W=$1 H=$2 TERM_NAME=$3 TAG="${1}x${2}-$3"

  # 1. presets over an edited form
  open_tui "$TAG" "$W" "$H" "$TERM_NAME" "$DATA"
  wait_for "Ready (Ctrl+S starts)" 60 "$OUT/$TAG-1-setup.txt" || fail "$TAG: Setup is not Ready on the demo data"
  found=""
  for _ in $(seq 30); do  # Tab until the focused field's help names --rank (waiting for each redraw)
    before=$(tmux capture-pane -p -t "$SESSION")
    tmux send-keys -t "$SESSION" Tab
    for _ in $(seq 40); do
      sleep 0.25
      tmux capture-pane -p -t "$SESSION" > "$OUT/$TAG-2-tab.txt"
      [ "$(cat "$OUT/$TAG-2-tab.txt")" != "$before" ] && break
    done
    sleep 0.3
    tmux capture-pane -p -t "$SESSION" > "$OUT/$TAG-2-tab.txt"
    if grep -qF -- "--rank" "$OUT/$TAG-2-tab.txt"; then found=1; break; fi
  done
  [ -n "$found" ] || fail "$TAG: Tab never reached the Rank field"
  tmux send-keys -t "$SESSION" C-u
  tmux send-keys -t "$SESSION" -l "8"
  sleep 1
  tmux send-keys -t "$SESSION" C-l
  wait_for "quick_test" 20 "$OUT/$TAG-3-presets.txt" || fail "$TAG: Ctrl+L did not list the presets"
  tmux send-keys -t "$SESSION" Down Down   # recommended, high_quality, quick_test
  sleep 0.5
  tmux send-keys -t "$SESSION" Enter
  wait_for "edited field" 20 "$OUT/$TAG-4-confirm.txt" || fail "$TAG: loading over an edited Rank did not ask first"
  grep -qF "Rank" "$OUT/$TAG-4-confirm.txt" || fail "$TAG: the overwrite question does not name Rank"
  tmux send-keys -t "$SESSION" y
  wait_for "fields changed" 20 "$OUT/$TAG-5-loaded.txt" || fail "$TAG: no 'quick_test: N fields changed' after loading"
  line=$(grep -o "quick_test: [0-9]* fields changed" "$OUT/$TAG-5-loaded.txt" | head -1)
  [ -n "$line" ] || fail "$TAG: the message does not name quick_test"
  pass "$TAG: preset loaded over an edited field after asking ($line)"
  close_tui

  # 2. readiness: the remembered dataset folder does not exist
  MISSING=$OUT/no-such-dataset-$TAG
  open_tui "$TAG-missing" "$W" "$H" "$TERM_NAME" "$MISSING"
  wait_for "Ctrl+N)" 60 "$OUT/$TAG-6-missing.txt" || fail "$TAG: Setup shows no problem for a missing dataset folder"
  grep -qF "Ready" "$OUT/$TAG-6-missing.txt" && fail "$TAG: Setup says Ready with a missing dataset folder"
  grep -qF "problem: Dataset folder" "$OUT/$TAG-6-missing.txt" || fail "$TAG: the problem does not name the Dataset folder"
  tmux send-keys -t "$SESSION" C-s
  wait_for "Not started" 20 "$OUT/$TAG-7-refused.txt" || fail "$TAG: Ctrl+S was not refused"
  sleep 2
  [ -z "$(ls -A "$RUNS" 2>/dev/null)" ] || fail "$TAG: a run folder was created: $(ls "$RUNS")"
  tmux capture-pane -p -t "$SESSION" | grep -qF "TRAINING" && fail "$TAG: the monitor shows a run"
  pass "$TAG: missing dataset folder: not Ready, Start refused, no run folder"
  close_tui
done
echo "all good; captures in $OUT"
