"""TFRecords: the one list of feature keys, example building (Beam side) and decoding (tf.data side)."""
