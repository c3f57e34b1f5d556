"""Serving: export a trained encoder with its item table, item index and id map
(``export.py``), and recommend from such an export (``recommend.py``). Plain PyTorch, FAISS and
Parquet: nothing here imports the trainer, Ray or DeepSpeed."""
