"""``python -m alexnet_gtsrb.data.synthetic --root DIR [--preview grid.png]``: see :func:`.cli.main`."""

import sys

from alexnet_gtsrb.data.synthetic.cli import main

if __name__ == "__main__":
    sys.exit(main())
