"""Helpers that know nothing of EEG, datasets or models: config loading, the command-line parser, checked
file reading and durable writes, the metric, seeds, DDP, run folders and checkpoints."""
