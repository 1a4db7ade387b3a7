#!/usr/bin/env bash
# Re-runs every comparison of docs/results.md: 3 training seeds per row (`--replicates 3`, Ray Tune trials
# under one MLflow parent run), equal meta-steps within each table, then `compare` with intervals and
# paired differences. Run it from a folder beside the repository's (it uses ../shared/datasets and writes
# mlflow.db, .orchestrator/ and results/ into the current folder):
#
#   mkdir -p ../results-run && cd ../results-run && bash ../main/scripts/regenerate_results.sh
#
# Step budgets (override with the environment): GEN_STEPS for the five generators and MT-GAN's SS control,
# MFH_STEPS and MFH_WORKERS for MFH and its ablations, CLS_STEPS for the classifiers. TABLES picks the tables and their order
# (default "mfh generators classifiers"; classifiers need mfh's first run, for the generated images). Each
# command's wall time goes to results/times.tsv; each compare's output to results/<table>.txt. Re-running the
# script skips every training row whose output is complete, so a table can be made over several sittings.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
GEN_STEPS=${GEN_STEPS:-300}
MFH_STEPS=${MFH_STEPS:-8000}  # where MFH separates from its untrained control (docs/results.md, learning curve)
MFH_WORKERS=${MFH_WORKERS:-2}  # Ray Train workers per seed: 4 tasks each per step (1 worker was not separated at 8,000)
CLS_STEPS=${CLS_STEPS:-500}
PY=${PY:-python}
mkdir -p results
export RAY_USAGE_STATS_ENABLED=0

timed() {  # timed NAME CMD...: run, keep its output, record its wall time; a row already finished is skipped
  local name=$1; shift
  # Resumable across sittings: a row whose output ends in its JSON line is done (compare rows are re-run: cheap).
  if [[ $name != cmp_* ]] && [ -s "results/$name.out" ] && tail -1 "results/$name.out" | $PY -c \
      'import json,sys; json.loads(sys.stdin.read())' 2>/dev/null; then
    echo "# $name: done earlier (results/$name.out), skipped"; return 0
  fi
  echo "$ $*" | tee -a results/commands.txt
  local t0; t0=$(date +%s)
  "$@" > "results/$name.out" 2> "results/$name.err"
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$*" >> results/times.tsv
}

run_id() { tail -1 "results/$1.out" | $PY -c 'import json,sys; print(json.loads(sys.stdin.read())["run_id"])'; }
child0() { tail -1 "results/$1.out" | $PY -c 'import json,sys; print(json.loads(sys.stdin.read())["child_run_ids"][0])'; }

TABLES=${TABLES:-mfh generators classifiers}

mfh_table() {  # MFH and its Table 4 ablations (one shot per novel character)
M="--dataset omniglot --data-root $DATA --experiment mfh-omniglot --replicates 3 --workers $MFH_WORKERS --steps $MFH_STEPS --set eval_every=1000 --json"
timed mfh           $PY -m orchestrator train mfh $M
timed mfh_nodiv     $PY -m orchestrator train mfh $M --set diversity_loss=false
timed mfh_kmeans    $PY -m orchestrator train mfh $M --set addressing=kmeans
timed cmp_mfh       $PY -m orchestrator compare --experiment mfh-omniglot --out results/mfh.png
cp results/cmp_mfh.out results/mfh.txt
}

generators_table() {  # the five generators and MT-GAN's SS control, at equal meta-steps
O="--dataset omniglot --data-root $DATA --experiment generators-omniglot --replicates 3 --steps $GEN_STEPS --json"
timed figr          $PY -m orchestrator train figr     $O
timed mtgan         $PY -m orchestrator train mtgan    $O --set pretrain_steps=$(( GEN_STEPS / 2 ))
timed mtgan_noss    $PY -m orchestrator train mtgan    $O --set pretrain_steps=$(( GEN_STEPS / 2 )) --set meta_ss=false
timed dcgan         $PY -m orchestrator train transfer $O --set arch=dcgan
timed cdcgan        $PY -m orchestrator train transfer $O --set arch=cdcgan
timed infogan       $PY -m orchestrator train transfer $O --set arch=infogan
timed cmp_gen       $PY -m orchestrator compare --experiment generators-omniglot --out results/generators.png
cp results/cmp_gen.out results/generators.txt
timed cmp_ss        $PY -m orchestrator compare --experiment generators-omniglot --out results/ss.png \
                      --pair "$(run_id mtgan)" "$(run_id mtgan_noss)"
cp results/cmp_ss.out results/ss.txt
timed cmp_figr      $PY -m orchestrator compare --experiment generators-omniglot --out results/figr_pairs.png \
                      --pair "$(run_id figr)" "$(run_id dcgan)"
timed cmp_ss_classhit $PY -m orchestrator compare --experiment generators-omniglot --out results/ss_classhit.png \
                      --diff-metric class_hit --pair "$(run_id mtgan)" "$(run_id mtgan_noss)" \
                      --pair "$(run_id figr)" "$(run_id mtgan_noss)"
timed cmp_gen_more  $PY -m orchestrator compare --experiment generators-omniglot --out results/gen_more_pairs.png \
                      --pair "$(run_id figr)" "$(run_id infogan)" --pair "$(run_id figr)" "$(run_id cdcgan)" \
                      --pair "$(run_id figr)" "$(run_id mtgan)" --pair "$(run_id mtgan)" "$(run_id dcgan)" \
                      --pair "$(run_id mtgan)" "$(run_id infogan)" --pair "$(run_id mtgan)" "$(run_id cdcgan)"
}

classifiers_table() {  # one-shot classifiers: ProtoNet and MetaIRNet, generated images from MFH's first seed
S=.orchestrator/stores/omniglot_mfh
timed pregen        $PY -m orchestrator pregenerate --dataset omniglot --data-root $DATA --from-run "$(child0 mfh)" \
                      --variants 10 --actors 2 --out $S
C="--dataset omniglot --data-root $DATA --experiment classifiers-omniglot --replicates 3 --steps $CLS_STEPS --json"
timed protonet      $PY -m orchestrator train protonet  $C
timed protonet_flip $PY -m orchestrator train protonet  $C --set augment=flip
timed protonet_gau  $PY -m orchestrator train protonet  $C --set augment=gaussian
timed protonet_gen  $PY -m orchestrator train protonet  $C --set augment=generated --set generated=$S
timed metairnet     $PY -m orchestrator train metairnet $C --set generated=$S
timed metairnet_fl  $PY -m orchestrator train metairnet $C --set generated=$S --set augment=generated,flip
timed cmp_cls       $PY -m orchestrator compare --experiment classifiers-omniglot --metric val_accuracy \
                      --out results/classifiers.png
cp results/cmp_cls.out results/classifiers.txt
timed cmp_cls_pairs $PY -m orchestrator compare --experiment classifiers-omniglot --metric val_accuracy \
                      --out results/cls_pairs.png --pair "$(run_id metairnet)" "$(run_id protonet)" \
                      --pair "$(run_id protonet_gen)" "$(run_id protonet)" --pair "$(run_id metairnet)" "$(run_id protonet_gen)"
timed cmp_cls_flip  $PY -m orchestrator compare --experiment classifiers-omniglot --metric val_accuracy \
                      --out results/cls_flip.png --pair "$(run_id protonet)" "$(run_id protonet_flip)" \
                      --pair "$(run_id metairnet)" "$(run_id metairnet_fl)"
}

for table in $TABLES; do
  "${table}_table"
done
echo "done: results/*.txt, results/times.tsv"
