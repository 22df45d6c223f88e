"""The readings tables of RESULTS.md §0: one row per reading (its run directories, seeds pooled).

    python benchmarks/readings_table.py multirun/readings/mnist_a0.1 > benchmarks/results/readings_mnist_a0.1.md

Validation and official-test accuracy (mean over clients at the last round; mean ± std over seeds,
the seeds in brackets), both for all classes and for the classes a client lacks, the share of the
images of missing classes that the reference classifier recognises, seconds per round and MB up per
client per round. Cells scored by the plain (not blur-robust) judge are marked. Readings are named
by the directory names they ran under (see NAMES); unknown ones keep their directory name.
"""
import json, statistics, sys
from pathlib import Path
NAMES = {
 "algorithm.shared_vtc=True,algorithm.vtc.dm_weight=0.0,algorithm.vtc.epochs=1.0,algorithm.vtc.synthesize_from=global,algorithm=fedvtc": "**SG0E: averaged VTC, synthesizing as averaged, no DM, 1 VTC pass (chosen)**",
 "algorithm.shared_vtc=True,algorithm.vtc.dm_weight=0.0,algorithm.vtc.synthesize_from=global,algorithm=fedvtc": "SG0: the same, 60 VTC steps",
 "algorithm.shared_vtc=True,algorithm.vtc.dm_weight=0.0,algorithm.vtc.epochs=0.5,algorithm.vtc.synthesize_from=global,algorithm=fedvtc": "SG0, half a VTC pass",
 "algorithm.shared_vtc=True,algorithm.synthesis.per_class=150,algorithm.vtc.dm_weight=0.0,algorithm.vtc.epochs=1.0,algorithm.vtc.synthesize_from=global,algorithm=fedvtc": "SG0E, 150 synthetic images per class",
 "algorithm.kl_weight=4.0,algorithm.shared_vtc=True,algorithm.vtc.dm_weight=0.0,algorithm.vtc.epochs=1.0,algorithm.vtc.synthesize_from=global,algorithm=fedvtc": "SG0E, KL weight β = 4",
 "algorithm.shared_vtc=True,algorithm.vtc.dm_weight=1.0,algorithm.vtc.synthesize_from=global,algorithm=fedvtc": "SG: averaged VTC, synthesizing as averaged, DM γ = 1, 60 steps",
 "algorithm=fedvtc": "former default: private VTCs, DM γ = 1, 60 steps",
 "algorithm=fedvtc_real_finetune": "control: former default fine-tuning on real data only",
 "algorithm.shared_vtc=True,algorithm=fedvtc": "averaged VTC, each client synthesizing with its own copy after its 60 steps, DM",
 "algorithm.shared_vtc=True,algorithm.vtc.synthesize_from=global,algorithm.vtc.train_encoder=True,algorithm=fedvtc": "VAE reading: SG with the reconstruction also training the extractor",
 "algorithm=local": "training alone",
 "algorithm=ccvr": "CCVR (defaults)",
 "algorithm=fedproto": "FedProto (defaults)",
 "algorithm=fedtgp": "FedTGP (defaults)",
 "algorithm=fedgen": "FedGen (defaults)",
 "algorithm=fedtype": "FedType (defaults)",
 "algorithm.calibration_epochs=5,algorithm.num_virtual_per_class=500,algorithm=ccvr": "CCVR, best of 4 trials (500 virtual features, 5 epochs)",
 "algorithm.calibration_epochs=1,algorithm.num_virtual_per_class=500,algorithm=ccvr": "CCVR (500, 1)",
 "algorithm.calibration_epochs=5,algorithm.num_virtual_per_class=100,algorithm=ccvr": "CCVR (100, 5)",
 "algorithm.proto_weight=0.1,algorithm=fedproto": "FedProto, λ = 0.1 (best of 3)",
 "algorithm.proto_weight=10.0,algorithm=fedproto": "FedProto, λ = 10",
}
def load(root):
    rows = {}
    for p in sorted(Path(root).glob("*/results.json")):
        r = json.loads(p.read_text())
        if not r.get("final"): continue
        name = ",".join(x for x in p.parent.name.split(",") if not x.startswith("seed="))
        if name == "algorithm.shared_vtc=True,algorithm.vtc.synthesize_from=global,algorithm=fedvtc": continue  # = SG with dm_weight=1.0 given
        r["_plain_judge"] = "robust" not in (r["meta"].get("reference_classifier") or {"robust": 1})
        rows.setdefault(name, []).append(r)
    return rows
def fmt(vals, scale=100):
    vals = [v for v in vals if v is not None]
    if not vals: return "–"
    m = statistics.fmean(vals) * scale
    if len(vals) == 1: return f"{m:.1f}"
    return f"{m:.1f} ± {statistics.stdev(vals)*scale:.1f} ({', '.join(f'{v*scale:.1f}' for v in vals)})"
root = sys.argv[1]
rows = load(root)
print("| reading | seeds | validation acc (%) | validation missing-class acc (%) | test acc (%) | test missing-class acc (%) | missing-class images recognised (%) | s/round | MB/client/round (up) |")
print("|---|---|---|---|---|---|---|---|---|")
order = list(NAMES)
for name in sorted(rows, key=lambda n: order.index(n) if n in order else 99):
    runs = rows[name]
    f = [r["final"] for r in runs]
    synth = [next((x["synthetic_accuracy_missing"] for x in reversed(r["rounds"]) if x.get("synthetic_accuracy_missing") is not None), None) for r in runs]
    if runs[0]["meta"].get("reference_classifier") is None: synth = [None]
    plain = runs[0]["_plain_judge"]
    spr = statistics.fmean(x["total_seconds"] / len(r["rounds"]) for x, r in zip(f, runs))
    up = statistics.fmean(x["total_bytes_up"] / (r["meta"]["num_clients"] * len(r["rounds"])) for x, r in zip(f, runs)) / 2**20
    print(f"| {NAMES.get(name, name)} | {len(runs)} | {fmt([x.get('validation_accuracy') for x in f])} | {fmt([x.get('validation_accuracy_missing') for x in f])} | {fmt([x['global_accuracy'] for x in f])} | {fmt([x.get('global_accuracy_missing') for x in f])} | {fmt(synth) + (' (plain judge)' if plain else '')} | {spr:.1f} | {up:.3f} |")
