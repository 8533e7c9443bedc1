import sys

from btrfsx.cli import main

sys.exit(main())
