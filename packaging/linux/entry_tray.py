"""The frozen ``pullgate-tray``: ``ui.app:main``, as the wheel's gui-script."""

import sys

from ui.app import main

if __name__ == "__main__":
    sys.exit(main())
