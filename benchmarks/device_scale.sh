#!/usr/bin/env bash
# One device call of issue 27's scale measurements, run from the lead's checkout root, where this
# helper's code travels in .carry/gpu27 and the wheels in .whl (BENCHMARKS.md, issue 27 section).
#   device_scale.sh 1: the decode profile (Gemma shape), then the Llama pipeline until the call's
#                      time is spent (the run folder comes back as $OUT/run.tar.gz);
#   device_scale.sh 2: that run folder carried back in (.carry/gpu27/run.tar.gz), the Llama
#                      pipeline resumed (stages done are reused, a search resumes from its
#                      checkpoint), then the generation case of each shape while GEN_S seconds
#                      (default 90) are left for it.
set -o pipefail
part=$1; limit=${2:-570}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:.carry/gpu27/src:.carry/gpu27 || exit
export PYTHONUNBUFFERED=1 REFUSAL_LENS_PROGRESS=0
log=$OUT/log-part$part.txt
mkdir -p "$OUT/json"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } >> "$log"
scale=(python3 .carry/gpu27/benchmarks/scale.py --sae-backend shim)
pipeline=(--shapes llama31-8b --run-dir /tmp/scale-run --search-decisions coin --accept-probability 0.9)
left() { echo $(( limit - SECONDS )); }
if [ "$part" = 1 ]; then
  echo "## gemma decode $(date -u +%T)" >> "$log"
  timeout 150 "${scale[@]}" --shapes gemma2-2b --cases decode --out "$OUT/json/gemma-decode" 2>&1 | tee -a "$log"
  echo "## llama pipeline $(date -u +%T), $(left) s left" >> "$log"
  timeout $(( $(left) - 25 )) "${scale[@]}" "${pipeline[@]}" --cases pipeline --out "$OUT/json/llama" 2>&1 | tee -a "$log"
else
  [ -f .carry/gpu27/run.tar.gz ] && tar xzf .carry/gpu27/run.tar.gz -C /tmp
  echo "## llama pipeline (resumed) $(date -u +%T)" >> "$log"
  timeout $(( $(left) - 25 - ${GEN_S:-90} )) "${scale[@]}" "${pipeline[@]}" --cases pipeline --out "$OUT/json/llama" \
    2>&1 | tee -a "$log"
  for shape in ${GEN_SHAPES:-gemma2-2b llama31-8b}; do
    [ "$(left)" -gt "${GEN_S:-90}" ] || break
    echo "## $shape generation $(date -u +%T), $(left) s left" >> "$log"
    timeout $(( $(left) - 20 )) "${scale[@]}" --shapes $shape --cases generation --out "$OUT/json/gen-$shape" 2>&1 \
      | tee -a "$log"
  done
fi
echo "## end $(date -u +%T)" >> "$log"
tar czf "$OUT/run.tar.gz" -C /tmp scale-run 2>/dev/null
tar czf "$OUT/json.tar.gz" -C "$OUT" json && rm -rf "$OUT/json"
ls -la "$OUT"
