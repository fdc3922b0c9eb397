"""Data: sources (zip / directory / URL / demo), ingest to shards + test PNGs, the
x4 degradation, and the tf.data input pipeline."""
