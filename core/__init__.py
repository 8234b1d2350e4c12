"""The bottom layer: what every other layer shares and nothing in soundsmith sits under.

- `files`: atomic file writing, JSON reading and writing with one-line errors;
- `weights`: weight files, strict loading, config dataclasses from JSON, weight fingerprints;
- `runtime`: device, dtype and CPU thread resolution;
- `checks`: argument checks that raise one-line errors naming the argument and its range;
- `paths`: where the shipped models are, and paths that must stay inside their tree;
- `run_lock`: one process per output folder;
- `version`: the installed package's version.

Layers, lowest first: core < codecs < gen < pipelines < eval < train < app, cli
(tests/test_layers.py holds the order).
"""
