#!/usr/bin/env bash
# End-to-end in tmux (issue 4): the Dataset screen's audio flow as a user drives it, at 80x24 and at
# 200x60, over TERM=xterm-256color and TERM=screen. Per size: open the TUI on the demo checkpoint,
# Ctrl+T to the audio tab, type the demo's song folder, Ctrl+S to preprocess, stop it with Ctrl+X
# after the first file, Ctrl+S again (it resumes: finished work shows as skipped), wait for "done",
# Ctrl+S into Setup, and check the form holds the new tensor folder.
#
#   bash tests/e2e/tmux_audio.sh            (SIDESTEP=path/to/sidestep to test another install)
#
# Captures go under $OUT (default: a temp dir); exits non-zero on any failure.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
SIDESTEP=${SIDESTEP:-$REPO/.venv/bin/sidestep}
PY=${PY:-$REPO/.venv/bin/python}
OUT=${OUT:-$(mktemp -d -t sidestep-audio-XXXX)}
DEMO=${SIDESTEP_DEMO_ROOT:-$OUT/demo}
SESSION=sidestep-audio-$$

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

echo "output: $OUT"
echo "demo checkpoint and songs (written once) in $DEMO ..."
"$PY" -m engine.cli demo --setup-only --root "$DEMO" > "$OUT/setup.json"
CKPT=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["checkpoint_dir"])' "$OUT/setup.json")
SONGS=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["audio_dir"])' "$OUT/setup.json")

for run in "80 24 xterm-256color" "200 60 screen"; do
  set -- $run
  W=$1 H=$2 TERM_NAME=$3 TAG="${1}x${2}-$3"
  CFG=$OUT/config-$TAG
  TENSORS=$OUT/tensors-$TAG
  rm -rf "$CFG" "$TENSORS"; mkdir -p "$CFG"
  printf '{"checkpoint_root": "%s", "output_root": "%s"}\n' "$CKPT" "$OUT/runs" > "$CFG/settings.json"
  tmux new-session -d -s "$SESSION" -x "$W" -y "$H" \
    "cd '$REPO' && SIDESTEP_CONFIG_DIR='$CFG' TERM=$TERM_NAME '$SIDESTEP'; sleep 60"
  wait_for "sidestep-demo" 60 "$OUT/$TAG-0-models.txt" || fail "$TAG: the Models screen did not list the demo model"
  tmux send-keys -t "$SESSION" Enter                     # use the highlighted (only) model
  wait_for "Tensor folder" 30 "$OUT/$TAG-1-dataset.txt" || fail "$TAG: no Dataset screen"
  tmux send-keys -t "$SESSION" C-t
  wait_for "Audio folder" 10 "$OUT/$TAG-2-audio.txt" || fail "$TAG: Ctrl+T did not open the audio tab"
  tmux send-keys -t "$SESSION" -l "$SONGS"
  wait_for "audio files" 60 "$OUT/$TAG-3-report.txt" || fail "$TAG: no builder report"
  tmux send-keys -t "$SESSION" Tab
  sleep 0.5
  tmux send-keys -t "$SESSION" C-u
  sleep 0.3
  tmux send-keys -t "$SESSION" -l "$TENSORS"
  wait_for "new folder" 10 "$OUT/$TAG-4-out.txt" || fail "$TAG: the tensor folder field did not take $TENSORS"
  pass "$TAG: report on screen ($(grep -o '[0-9]* audio files[^·]*' "$OUT/$TAG-3-report.txt" | head -1))"

  tmux send-keys -t "$SESSION" C-s
  wait_for "pass 1 ✓" 180 "$OUT/$TAG-5-running.txt" || fail "$TAG: no per-file progress"
  tmux send-keys -t "$SESSION" C-x
  wait_for "run again to resume" 120 "$OUT/$TAG-6-stopped.txt" || fail "$TAG: Ctrl+X did not stop the job"
  pass "$TAG: progress per file, then stopped"
  tmux send-keys -t "$SESSION" C-s
  wait_for "✓ done:" 300 "$OUT/$TAG-7-done.txt" || fail "$TAG: the resumed job did not finish"
  n=$(find "$TENSORS" -maxdepth 1 -name '*.pt' ! -name '*.tmp.pt' | wc -l)
  [ "$n" -ge 1 ] || fail "$TAG: no tensors in $TENSORS"
  pass "$TAG: resumed and done, $n tensor files"
  tmux send-keys -t "$SESSION" C-s
  wait_for "Dataset folder" 60 "$OUT/$TAG-8-setup.txt" || fail "$TAG: Ctrl+S did not open Setup"
  grep -qF "$TENSORS" "$OUT/$TAG-8-setup.txt" || fail "$TAG: Setup does not show the new tensor folder"
  pass "$TAG: Setup holds $TENSORS"
  cat "$OUT/$TAG-7-done.txt"
  tmux send-keys -t "$SESSION" C-q
  sleep 2
  tmux kill-session -t "$SESSION" 2>/dev/null || true
done
echo "all good; captures in $OUT"
