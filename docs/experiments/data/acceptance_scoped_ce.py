"""Capability cost of the acceptance run's targeted methods with the two-pass cross-entropy (prompt pass, then
the completion continuing its cache): the run measured it in one pass, where a scope sees no generated token."""
import json
import sys
from pathlib import Path

import torch

from refusal_lens.capability import BaseLogits, completion_cost
from refusal_lens.interventions.parse import parse_intervention
from refusal_lens.organism import load_organism

torch.set_num_threads(1)
run = sys.argv[1] if len(sys.argv) > 1 else 'runs/organism'
ev = json.loads(Path(f'{run}/results.json').read_text())['evaluation']
ps = json.loads(next(Path(run).glob('stages/prompt_sets-*/result.json')).read_text())
harmless = [p['text'] for p in ps['harmless_eval']]
completions = ev['capability']['completions']
assert len(harmless) == len(completions)
chat = load_organism()
base = BaseLogits(chat)
plain, _ = completion_cost(chat, harmless, completions, base, batch_size=32)
print(f"baseline CE {plain.mean:.4f} (run: {ev['capability']['methods']['none']['cross_entropy']:.4f})")
out = {}
for name in ["minimal_shared", "minimal_shared_prompt", "minimal_shared_post_instruction", "minimal_shared_generated",
             "minimal_shared_above_harmless", "minimal_shared_high_projection", "cossim_ap_clamp"]:
    ivs = parse_intervention(f"features:{run}/feature_sets/{name}.json", chat)
    ce, shift = completion_cost(chat, harmless, completions, base, interventions=ivs, batch_size=32)
    old = ev['methods'][name]['capability']
    out[name] = {"delta_ce": ce.mean - plain.mean, "kl_mean": shift.to_json()["kl_mean"]}
    print(f"{name:36s} dCE {ce.mean - plain.mean:+.3f} (run {old['delta_cross_entropy']:+.3f})  KL {shift.to_json()['kl_mean']:.3f} (run {old['kl_mean']:.3f})", flush=True)
print(json.dumps(out, indent=1))
