import sys

from postwall.cli import main

sys.exit(main())
