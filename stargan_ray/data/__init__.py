"""Data: where images come from and how they become training batches.

folders    domain folder trees, listing and decoding image files (local paths or URIs)
labels     domains from a labels CSV or CelebA-style attributes instead of folders
shapes     how a photo that is not square becomes square (data.fit: stretch, crop, pad)
synthetic  the embedded synthetic dataset, generated into a cache
layout     the canonical order of a split, its groups and chunk plan (which rows each step reads)
shards     the Parquet shard format: manifest, writer and row-group reader
table      ImageTable: the rows of one split, from folders or shards
sampling   Ray-free: crops, augmentation, rows to Batch, the in-process reader
prepare    pack a folder tree into shards (`stargan-ray prepare`)
pipeline   Ray Data glue: the training dataset and the per-worker batch iterators
"""
