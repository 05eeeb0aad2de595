"""A recipe proxy: train a pretraining preset with overrides, then score it on the kNN monitor's subsets.

The README's "Settings tried" tables come from it. It trains `preset` (name or YAML) with `key=value`
overrides into a temporary folder, then scores, on the monitor's seeded subsets (NB train images, 5,000
by default, as the kNN bank and the probe's training set; 2,000 test images), with kNN (k = 20) and a
logistic-regression probe: the student as trained, the student after BatchNorm recalibration on 2,048
clean views, and the teacher. INIT=1 also scores the network at initialisation; T sets torch's threads
(1 by default); EVAL_SEED fixes the scoring subsets (default: the run's seed), so runs that differ only in
`runtime.seed` are scored on the same images. One JSON line per run goes to stdout and to RESULTS
(default `recipe_proxy.jsonl`).

    python benchmarks/recipe_proxy.py nopatch FashionMNIST/ResNet18s_OBoW_full_cpu runtime.time_budget_s=300 \
        runtime.workers=0 data.num_img_patches=0
"""
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from obow.config import load_pretrain_config
from obow.data.multicrop import eval_transform
from obow.data.sources import open_dataset
from obow.data.views import ViewDataset
from obow.models.batchnorm import recalibrate_batchnorm
from obow.models.features import extract_features, knn_accuracy
from obow.models.obow import build_obow
from obow.reporting import ConsoleReporter
from obow.train.checkpoint import latest_checkpoint
from obow.train.engine import run_pretrain
from obow.train.monitor import seeded_subset


def score(net: torch.nn.Module, bank: ViewDataset, queries: ViewDataset) -> tuple[float, float]:
    """(kNN top-1, logistic-regression top-1) of the net's pooled features, bank -> queries."""
    bank_x, bank_y = extract_features(net, bank, batch_size=256, progress=False)
    query_x, query_y = extract_features(net, queries, batch_size=256, progress=False)
    knn = knn_accuracy(bank_x, bank_y, query_x, query_y, k=20, temperature=0.07, num_classes=10)
    scaler = StandardScaler().fit(bank_x.numpy())
    probe = LogisticRegression(max_iter=300).fit(scaler.transform(bank_x.numpy()), bank_y.numpy())
    linear = float((probe.predict(scaler.transform(query_x.numpy())) == query_y.numpy()).mean() * 100)
    return round(knn, 2), round(linear, 2)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("T", "1")))
    name, preset, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    spec = load_pretrain_config(preset, overrides)
    d, seed = spec.data, int(os.environ.get("EVAL_SEED", spec.runtime.seed))
    views = eval_transform(d.teacher_resize, d.teacher_size, d.mean, d.std)
    train = open_dataset(d.dataset_name, d.data_dir, "train")
    test = open_dataset(d.dataset_name, d.data_dir, "test")
    bank = ViewDataset(train, views, seeded_subset(len(train), int(os.environ.get("NB", "5000")), seed))
    queries = ViewDataset(test, views, seeded_subset(len(test), 2000, seed + 1))
    clean = ViewDataset(train, views, seeded_subset(len(train), 2048, seed + 7))

    result: dict = {"name": name, "preset": preset, "overrides": overrides}
    if os.environ.get("INIT"):
        torch.manual_seed(spec.runtime.seed)
        result["init"] = score(build_obow(spec).student, bank, queries)
    out = Path(tempfile.mkdtemp(prefix=f"proxy_{name}_"))
    start, load_before = time.monotonic(), os.getloadavg()[0]
    reporter = ConsoleReporter(out / "logs", show_progress=False)
    run_pretrain(spec, out, reporter)
    reporter.close()
    result["train_s"] = round(time.monotonic() - start)
    result["load"] = f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"
    checkpoint = torch.load(latest_checkpoint(out), weights_only=False, map_location="cpu")
    result["steps"] = int(checkpoint["iteration"])
    model = build_obow(spec)
    model.load_state_dict(checkpoint["model"])
    student = model.student.eval()
    result["student"] = score(student, bank, queries)
    recalibrated = copy.deepcopy(student)
    recalibrate_batchnorm(recalibrated, clean)
    result["student+recal"] = score(recalibrated.eval(), bank, queries)
    result["teacher"] = score(model.teacher.eval(), bank, queries)
    result["out"] = str(out)
    print(json.dumps(result), flush=True)
    with open(os.environ.get("RESULTS", "recipe_proxy.jsonl"), "a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
