"""Evaluation protocols of a trained student (each a `run_xxx(spec, out_dir, reporter) -> dict`).

`linear` (frozen probe, optional BN and feature cache: `cache`), `semisup` (fine-tuning on a labelled
fraction: `splits`), both trained by the one epoch loop of `loop`; `fewshot` (cosine prototypes over
seeded episodes), `knn` (weighted kNN of `obow.models.features`, which the pretraining monitor shares),
`svm` (VOC07-style SVMs, mAP). `common` holds what they share: backbone loading, labelled splits,
loaders, the frozen-state hash, result files.
"""
