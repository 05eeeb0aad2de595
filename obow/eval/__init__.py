"""Evaluation protocols of a trained student (each a `run_xxx(spec, out_dir, reporter) -> dict`).

`linear` (frozen probe, optional BN and feature cache: `cache`), `semisup` (fine-tuning on a labelled
fraction: `splits`), `fewshot` (cosine prototypes over seeded episodes), `knn` (weighted kNN, also the
pretraining monitor with `features.extract_features`), `svm` (VOC07-style SVMs, mAP). `common` holds
what they share: device, backbone loading, datasets with views, the frozen-state hash, result files.
"""
