#!/usr/bin/env bash
# The protocol-sensitivity tables of docs/protocol_sensitivity.md, from nothing to markdown, resumable.
#
#   FSIG_DATASETS=/path/to/datasets scripts/protocol_sensitivity_table.sh [WORKDIR]
#
# Steps (each skipped when its output exists, so a rerun after an interruption goes on where it stopped):
#   1. WORKDIR/omniglot_flowers_layout.npy: the first 100 Omniglot characters in LoFGAN's Flowers layout
#      (scripts/omniglot_to_npy.py; read as --dataset flowers-npy: classes 85-99 unseen, pool = first 10).
#   2. WORKDIR/run_npy.id, WORKDIR/run_omniglot.id: an MFH checkpoint on each (python -m orchestrator train mfh),
#      in WORKDIR/mlflow.db; the id is written only when training finished.
#   3. WORKDIR/table_npy.md, WORKDIR/table_omniglot.md: scripts/protocol_sensitivity.py on each checkpoint;
#      each (row, seed) result is appended to WORKDIR/results_<name>.jsonl as it finishes and not evaluated again
#      (under the same settings) when the table is resumed.
#   4. WORKDIR/tables.md: the tables made so far, each under the settings that made it.
# A run that was interrupted in step 2 is left in the store (FAILED or unfinished) and trained again.
#
# Settings (environment; the defaults are the documented table's):
#   STEPS=300          meta-steps of each checkpoint
#   SEEDS="0 1 2"      evaluation seeds (intervals need >= 2)
#   FAKES=128          fakes per class of every row but fakes-more (LoFGAN's 128; fewer only to try the script)
#   MORE_FAKES=512     fakes per class of the fakes-more row
#   ROWS=...           rows of scripts/protocol_sensitivity.py (default: all)
#   FEATURES=          "--inception-weights FILE" (the FID network) or "--random-inception"; empty: no Inception rows
#   TRAIN_SET=         extra train flags for both checkpoints, e.g. "--set width=4" (only to try the script)
#   TABLES="npy omniglot"  which checkpoints to train and tabulate (e.g. TABLES=npy: the cheaper one first)
#   PYTHON=python
set -euo pipefail

WORK=${1:-protocol-sensitivity}
STEPS=${STEPS:-300}
SEEDS=${SEEDS:-0 1 2}
FAKES=${FAKES:-128}
MORE_FAKES=${MORE_FAKES:-512}
ROWS=${ROWS:-lofgan-seeded,lofgan-published,lofgan-v1,shots-k,fakes-more,per-class,inception,inception-antialias,ours}
FEATURES=${FEATURES:-}
TRAIN_SET=${TRAIN_SET:-}
TABLES=${TABLES:-npy omniglot}
PYTHON=${PYTHON:-python}
: "${FSIG_DATASETS:?set FSIG_DATASETS to the folder holding omniglot/ (the Omniglot archives)}"

for name in $TABLES; do
    case $name in
        npy | omniglot) ;;
        *) echo "TABLES=\"$TABLES\": unknown table $name; use npy and/or omniglot" >&2; exit 2 ;;
    esac
done

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
URI="sqlite:///$WORK/mlflow.db"
NPY="$WORK/omniglot_flowers_layout.npy"
say() { echo "[protocol_sensitivity_table] $*" >&2; }

if [[ " $TABLES " != *" npy "* ]]; then
    :  # the .npy is only the npy table's data
elif [ ! -s "$NPY" ]; then
    say "building $NPY"
    "$PYTHON" scripts/omniglot_to_npy.py "$WORK/partial.npy"
    mv "$WORK/partial.npy" "$NPY"
else
    say "have $NPY"
fi

train() {  # name, then the dataset flags
    local name=$1; shift
    if [ -s "$WORK/run_$name.id" ]; then
        say "have checkpoint $name: run $(cat "$WORK/run_$name.id")"
        return
    fi
    say "training checkpoint $name"
    # shellcheck disable=SC2086  # TRAIN_SET holds several flags
    "$PYTHON" -m orchestrator train mfh "$@" --image-size 32 --channels 1 --steps "$STEPS" $TRAIN_SET \
        --tracking-uri "$URI" --experiment "protocol-sensitivity-$name" --json | tail -n 1 > "$WORK/train_$name.json"
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["run_id"])' "$WORK/train_$name.json" \
        > "$WORK/partial.id"
    mv "$WORK/partial.id" "$WORK/run_$name.id"
}

for name in $TABLES; do
    case $name in
        npy) train npy --dataset flowers-npy --data-root "$NPY" ;;
        omniglot) train omniglot --dataset omniglot --data-root "$FSIG_DATASETS" ;;
    esac
done

table() {  # name
    local name=$1 run
    run=$(cat "$WORK/run_$name.id")
    if [ -s "$WORK/table_$name.md" ]; then
        say "have table $name"
        return
    fi
    say "table $name (run $run)"
    # shellcheck disable=SC2086  # SEEDS and FEATURES hold several words
    "$PYTHON" scripts/protocol_sensitivity.py "$run" --tracking-uri "$URI" --seeds $SEEDS --fakes "$FAKES" \
        --more-fakes "$MORE_FAKES" --rows "$ROWS" $FEATURES --partial "$WORK/results_$name.jsonl" \
        --markdown "$WORK/partial.md"
    {
        echo "Made by \`scripts/protocol_sensitivity_table.sh\` with STEPS=$STEPS SEEDS=\"$SEEDS\" FAKES=$FAKES" \
             "MORE_FAKES=$MORE_FAKES ROWS=$ROWS FEATURES=\"$FEATURES\" TRAIN_SET=\"$TRAIN_SET\" on $(hostname)," \
             "$(date -u +%F)."
        echo
        cat "$WORK/partial.md"
    } > "$WORK/table_$name.md"
    rm "$WORK/partial.md"
}

for name in $TABLES; do
    table "$name"
done

{
    for name in npy omniglot; do
        if [ -s "$WORK/table_$name.md" ]; then
            case $name in
                npy) title="MFH on Omniglot in LoFGAN's Flowers layout (\`--dataset flowers-npy\`, $STEPS steps)" ;;
                omniglot) title="MFH on Omniglot (\`--dataset omniglot\`, $STEPS steps)" ;;
            esac
            printf '### %s\n\n' "$title"
            cat "$WORK/table_$name.md"
            echo
        fi
    done
} > "$WORK/tables.md"
say "wrote $WORK/tables.md"
