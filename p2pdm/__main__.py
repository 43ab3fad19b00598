import sys

from p2pdm.cli import main

sys.exit(main())
