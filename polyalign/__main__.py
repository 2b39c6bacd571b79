import sys

from polyalign.cli import main

sys.exit(main())
