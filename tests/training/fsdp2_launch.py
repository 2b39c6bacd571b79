"""``polyalign`` CLI with accelerate's FSDP allowed on CPU: a test shim for ``test_fsdp2.py``.

accelerate 1.15 selects ``DistributedType.FSDP`` only for GPU-like device types
(``AcceleratorState.__init__``); on CPU a run given an FSDP plugin silently becomes
``MULTI_CPU`` (DDP). This shim re-applies FSDP after every ``AcceleratorState`` construction
(each one copies ``PartialState``'s ``MULTI_CPU`` back), so the stock Trainer + accelerate FSDP2
code paths (``fsdp2_prepare_model``, FSDP2 gradient clipping, full-state-dict saving) run on
CPU with gloo. Nothing else is changed. Usage: ``torchrun ... fsdp2_launch.py train --config R.yaml``.
"""

import sys

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_cpu_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    plugin = fsdp_plugin or self.__dict__.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin


AcceleratorState.__init__ = _init_with_cpu_fsdp

if __name__ == "__main__":
    from polyalign.cli import main

    sys.exit(main())
