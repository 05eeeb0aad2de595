"""Every evaluation kind reports labelled phases, in order, with done/total units that reach their total."""

import pytest

from obow.config.eval import FewshotSpec, KnnSpec, LinearSpec, SemisupSpec, SvmSpec
from obow.eval.fewshot import run_fewshot
from obow.eval.knn import run_knn
from obow.eval.linear import run_linear
from obow.eval.semisup import run_semisup
from obow.eval.svm import run_svm
from obow.reporting import RecordingReporter

from .test_eval_runs import MEAN, SMALL, STD, make_multilabel_folder


def finished_phases(rec: RecordingReporter) -> dict[str, tuple[int, int]]:
    """label -> (last done, total): every phase ended at its total."""
    last: dict[str, tuple[int, int]] = {}
    for _, label, done, total in rec.progress_log:
        last[label] = (done, total)
    return last


def check(rec: RecordingReporter, expected: list[str]) -> None:
    assert rec.phases() == expected
    for label, (done, total) in finished_phases(rec).items():
        assert total > 0 and done == total, (label, done, total)
    # the clock's snapshot names the phases still to come
    assert rec.clock.snapshot()["label"] == expected[-1]


def test_knn_phases(tiny_backbone_file, tmp_path):
    path, _ = tiny_backbone_file
    rec = RecordingReporter()
    run_knn(KnnSpec(checkpoint=str(path), **SMALL, train_split="test", test_split="test", subset=3, test_subset=2,
                    k=[1, 5]), tmp_path, rec)
    check(rec, ["train features", "test features", "kNN scoring"])
    assert finished_phases(rec)["kNN scoring"] == (40, 40)  # 20 queries x 2 values of k


@pytest.mark.parametrize("precache", [True, False])
def test_linear_phases(tiny_backbone_file, tmp_path, precache):
    path, _ = tiny_backbone_file
    rec = RecordingReporter()
    run_linear(LinearSpec(checkpoint=str(path), **SMALL, train_split="test", test_split="test", subset=3,
                          test_subset=2, epochs=2, precache=precache), tmp_path, rec)
    check(rec, ["caching train features", "caching test features", "training"] if precache
          else ["test features", "training"])
    assert finished_phases(rec)["training"] == (2, 2)  # 30 images of 32 per batch, 2 epochs


def test_semisup_phases_return_to_training_after_testing(tiny_backbone_file, tmp_path):
    path, _ = tiny_backbone_file
    rec = RecordingReporter()
    run_semisup(SemisupSpec(checkpoint=str(path), **SMALL, train_split="test", test_split="test", subset=4,
                            test_subset=2, epochs=2, eval_every=1, percentage=50), tmp_path, rec)
    check(rec, ["training", "testing", "training", "testing"])


def test_fewshot_and_svm_phases(tiny_backbone_file, tmp_path):
    path, _ = tiny_backbone_file
    rec = RecordingReporter()
    run_fewshot(FewshotSpec(checkpoint=str(path), **SMALL, split="test", test_subset=6, n_way=3, k_shot=[1, 2],
                            n_query=2, episodes=5), tmp_path / "fs", rec)
    check(rec, ["features", "episodes"])
    assert finished_phases(rec)["episodes"] == (10, 10)
    labels = make_multilabel_folder(tmp_path / "data")
    rec = RecordingReporter()
    run_svm(SvmSpec(checkpoint=str(path), dataset="ImageFolder", data_dir=str(tmp_path / "data"), resize=32, size=32,
                    mean=MEAN, std=STD, workers=0, device="cpu", labels_file=str(labels), costs=[0.1, 1.0], folds=2),
            tmp_path / "svm", rec)
    check(rec, ["train features", "test features", "SVM fits"])
    assert finished_phases(rec)["SVM fits"] == (10, 10)  # 2 classes x (2 costs x 2 folds + the final fit)
