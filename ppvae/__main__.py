"""``python -m ppvae`` (and ``torchrun -m ppvae``) runs the command line."""

import sys

from ppvae.cli import main

if __name__ == "__main__":
    sys.exit(main())
