"""Where a finished run's clients err on the validation images of the classes they hold.

    python benchmarks/held_class_errors.py <run dir> [<run dir> ...]

For each run (a directory with config.yaml and client_state/, e.g. of experiment=readings): the
clients' final models on the validation split, mean over clients, of the classes each holds:
accuracy; the share of those images predicted as a class the client holds no image of; and the
accuracy on the held classes with fewer than 50 local training images (a FedVTC client's default
synthetic images per class) and on the others (per client-class pair); for a FedVTC run, also the share of synthetic images of the held classes
(drawn with the client's final VTC, 20 per class) that the client calls a class it lacks. RESULTS.md §1 reads the
synthesis.classes reading with it.
"""
import sys
from pathlib import Path
import numpy as np, torch
from omegaconf import OmegaConf
from fedvtc.algorithms.fedvtc import build_vtc
from fedvtc.config import build_settings
from fedvtc.data import load_dataset
from fedvtc.federated_data import federated_split
from fedvtc.state import load_state
from fedvtc.training import GlobalGaussians, synthesize
from fedvtc.zoo import create_model
torch.set_num_threads(1)
RARE = 50
for run in map(Path, sys.argv[1:]):
    if not (run / "config.yaml").is_file() or not (run / "client_state").is_dir():
        print(f"skipped {run}: not a finished run directory (config.yaml and client_state/)", file=sys.stderr)
        continue
    s = build_settings(OmegaConf.load(run / "config.yaml"), output_dir=run)
    d = s.dataset
    train, _ = load_dataset(d, s.data_dir, download=False)
    split = federated_split(s)
    vx, vy = train.x[split.validation], train.y[split.validation].numpy()
    to_missing, held_acc, few, many, synth_to_missing = [], [], [], [], []
    for cid in range(s.num_clients):
        st = load_state(run / "client_state" / f"client_{cid}.pt")
        m = create_model(st["arch"], num_classes=d.num_classes, feature_dim=s.feature_dim, in_channels=d.channels, image_size=d.image_size)
        m.load_state_dict(st["model"]); m.eval()
        held = np.unique(train.y[split.train[cid]].numpy())
        with torch.no_grad():
            pred = torch.cat([m(vx[i:i+500]).argmax(1) for i in range(0, len(vx), 500)]).numpy()
        hm = np.isin(vy, held)
        counts = np.bincount(train.y[split.train[cid]].numpy(), minlength=d.num_classes)
        for c in held:
            (few if counts[c] < RARE else many).append(np.mean(pred[vy == c] == c))
        if "vtc" in st.get("extra", {}) and st["extra"].get("global_stats") is not None:
            # The shortcut test: what the client calls synthetic images of the classes it holds.
            vtc = build_vtc(s)
            vtc.load_state_dict(st["extra"]["vtc"])
            target = GlobalGaussians.from_stats(st["extra"]["global_stats"], d.num_classes,
                                                variance_floor=s.algorithm.variance_floor, device=torch.device("cpu"))
            held_t = torch.as_tensor(held)
            with torch.no_grad():
                images = synthesize(vtc, target, per_class=20, classes=held_t[target.present[held_t]],
                                    generator=torch.Generator().manual_seed(0))
                synth_pred = m(images.x).argmax(1).numpy()
            synth_to_missing.append(np.mean(~np.isin(synth_pred, held)))
        to_missing.append(np.mean(~np.isin(pred[hm], held)))
        held_acc.append(np.mean(pred[hm] == vy[hm]))
    print(f"{run.name}: held-class val acc {100*np.mean(held_acc):.1f}%, held-class images predicted as a missing class {100*np.mean(to_missing):.1f}%; held classes with < {RARE} local images: {100*np.mean(few):.1f}% ({len(few)} client-classes), >= {RARE}: {100*np.mean(many):.1f}% ({len(many)})"
          + (f"; synthetic images of held classes called a missing class: {100*np.mean(synth_to_missing):.1f}%" if synth_to_missing else ""))
