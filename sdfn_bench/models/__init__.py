"""The SDFN networks: lung segmenter, DenseNet-121 feature extractor, fusion head; checkpoints."""
