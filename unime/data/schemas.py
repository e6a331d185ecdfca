"""Arrow schemas of every table the pipeline reads or writes."""

import pyarrow as pa

# Where an input row came from: its dataset, its file and its row in that file.
PROVENANCE = [
    ("dataset", pa.string()),
    ("source", pa.string()),
    ("row_index", pa.int64()),
]

# A training pair (one row per query), in the UniME-V2 field names, with stable ids.
PAIR = pa.schema([
    ("query_id", pa.string()),
    ("query_text", pa.string()),
    ("query_image", pa.string()),
    ("pos_id", pa.string()),
    ("pos_text", pa.string()),
    ("pos_image", pa.string()),
    *PROVENANCE,
])

# A mined record: the released UniME-V2 training format (docs/method.md section 1).
MINED = pa.schema([
    ("query_text", pa.string()),
    ("query_image", pa.string()),
    ("pos_text", pa.string()),
    ("pos_image", pa.string()),
    ("query_pos_scores", pa.float64()),
    ("hard_negatives", pa.list_(pa.list_(pa.string()))),
    ("hard_negatives_scores", pa.list_(pa.float64())),
])

# An MMEB-eval row: the positive is always index 0 of the target lists.
EVAL = pa.schema([
    ("qry_text", pa.string()),
    ("qry_img_path", pa.string()),
    ("tgt_text", pa.list_(pa.string())),
    ("tgt_img_path", pa.list_(pa.string())),
    *PROVENANCE,
])

# One rejected input row, written beside a stage's output.
QUARANTINE = pa.schema([
    ("source", pa.string()),
    ("row_index", pa.int64()),
    ("field", pa.string()),
    ("reason", pa.string()),
])
