import sys

from sslab.cli import main

sys.exit(main())
