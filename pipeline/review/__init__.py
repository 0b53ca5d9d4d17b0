"""The review of an `allray infer` output: a technologist confirms, corrects and signs off each count.

Plain, Ray-free parts that the web app in jobs/review.py wires together:
- cells.py:   the report's cells (predictions read once, without crops), their classes and confidence
- store.py:   review state in a database (SQLite by default): decisions, sign-offs, the audit trail
- counts.py:  per-patient counts before and after review
- exports.py: signed reports, patients_reviewed.csv, the labels and audit CSVs

The Parquet predictions are never written to: review state lives in the database, keyed by cell
key (content hash + cell id, pipeline.cellsets.cell_key).
"""
