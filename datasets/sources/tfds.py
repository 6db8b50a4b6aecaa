"""`tfds:NAME[:SPLIT]`: a TensorFlow Datasets dataset, read from `--data_dir`, never downloaded unless
`--tfds_download` is given.

SPLIT (default "train") is the training split; validation is the dataset's "validation" or "test" split, or,
when it has neither, `--val_fraction` of the training split. Images stay encoded (`SkipDecoding`) so the
pipeline decodes them like files (fused JPEG crop); labels are the "label" feature.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from datasets.sources.base import DataError, Parse, Source, Streamed, Targets, shard_warning, shuffle_share


@dataclasses.dataclass
class TFDSSplit(Streamed):
    """One split (a TFDS split expression such as "train[:80%]") of a prepared builder."""

    builder: object  # tfds.core.DatasetBuilder
    split: str
    num_examples: int
    bytes_per_example: int
    num_shards: int

    def __len__(self) -> int:
        return self.num_examples

    def stream(self, context: tf.distribute.InputContext, seed: int, shuffle: bool,
               targets: Targets = Targets(), epoch: tf.Tensor | None = None) -> tuple[tf.data.Dataset, Parse]:
        """One epoch of this pipeline's share: TFDS file-level sharding when training over enough files,
        else every pipeline reads all files in order and keeps every n-th example; with `epoch` (`epochs`),
        shuffled by (seed, epoch)."""
        targets.require_none("TFDS data")
        import tensorflow_datasets as tfds

        pipelines = context.num_input_pipelines
        by_file = shuffle and pipelines > 1 and self.num_shards >= pipelines
        if shuffle and pipelines > 1 and not by_file:
            shard_warning(self.num_shards, f"files in {self.builder.name}", pipelines)
        read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=seed,
                                      input_context=context if by_file else None)
        ds = self.builder.as_dataset(self.split, shuffle_files=shuffle, read_config=read_config,
                                     decoders={"image": tfds.decode.SkipDecoding()})
        if pipelines > 1 and not by_file:
            ds = ds.shard(pipelines, context.input_pipeline_id)
        if shuffle:
            ds = shuffle_share(ds, self.num_examples, self.bytes_per_example, context, seed, epoch)
        return ds, lambda r: {"encoded": r["image"], "label": tf.cast(r["label"], tf.int32), "id": r["tfds_id"]}

    def most_boxes(self) -> int:
        """0: TFDS data is read with image labels only."""
        return 0


def tfds_source(spec_path: str, data_dir: str, download: bool, val_fraction: float) -> Source:
    """The prepared TFDS dataset NAME[:SPLIT] under `data_dir` (downloaded and prepared only if `download`)."""
    import tensorflow_datasets as tfds

    name, _, train_split = spec_path.partition(":")
    train_split = train_split or "train"
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise DataError(f"--dataset=tfds:{spec_path}: TFDS knows no dataset {name!r} and none is prepared in "
                        f"--data_dir={data_dir or '(TFDS default)'}") from error
    if not builder.is_prepared():
        if not download:
            raise DataError(f"--dataset=tfds:{spec_path}: {name} is not prepared in --data_dir="
                            f"{data_dir or '(TFDS default, ~/tensorflow_datasets)'}. Prepare it with "
                            f"`tfds build {name} --data_dir=DIR` (or pass --tfds_download to let this run "
                            "download it), then pass --data_dir=DIR.")
        builder.download_and_prepare()
    info = builder.info
    if "image" not in info.features or "label" not in info.features:
        raise DataError(f"--dataset=tfds:{spec_path}: needs 'image' and 'label' features, has {list(info.features)}")
    val_split = next((s for s in ("validation", "test") if s in info.splits and s != train_split), None)
    if val_split is None:
        percent = round(100 * (1 - val_fraction))
        train_split, val_split = f"{train_split}[:{percent}%]", f"{train_split}[{percent}%:]"

    def split(expression: str) -> TFDSSplit:
        split_info = info.splits[expression]
        return TFDSSplit(builder, expression, split_info.num_examples,
                         split_info.num_bytes // max(1, split_info.num_examples), max(1, split_info.num_shards))

    return Source(name, list(info.features["label"].names), {"train": split(train_split), "val": split(val_split)})
