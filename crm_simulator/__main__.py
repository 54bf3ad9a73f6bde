"""``python -m crm_simulator``: same as the ``crm-simulator`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
