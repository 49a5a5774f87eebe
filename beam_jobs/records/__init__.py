"""One file, one record: the TFRecord schema, the hand-written Example encoder, encoding a file, error rows."""
