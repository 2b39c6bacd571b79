"""polyalign: multilingual safety alignment of large language models.

Data flows one way: ``data`` (records, readers, tokenisation) -> ``losses`` (pure tensor
functions) -> ``training`` (a thin ``transformers.Trainer``) -> ``evaluation`` (benchmarks,
generation, judges, metrics) -> ``analysis`` -> ``report``. ``toyworld`` and ``cli`` are
clients of the library.
"""

__version__ = "0.1.0"
