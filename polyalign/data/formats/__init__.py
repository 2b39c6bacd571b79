"""One reader module per format family; :mod:`polyalign.data.readers` dispatches to them.

* ``common``: strict decoding, JSON lists with line numbers, JSONL, CSV rows, typed fields, turns
* ``preference``: official MPO JSON, MLC JSONL, TRL preference JSONL
* ``canonical``: the project's own JSONL (``{"type": ..., **record.to_dict()}``)
* ``benchmarks``: MultiJail CSV, XSafety CSV folders, RTP-LX JSONL
* ``parallel``: multiway-parallel folders (one file per language)
* ``generic``: any JSONL/CSV with a column map

Each reader yields :class:`polyalign.data.validation.Item` s (record + where it came from +
declared-language checks); structural errors raise :class:`~polyalign.errors.UserError`.
"""
