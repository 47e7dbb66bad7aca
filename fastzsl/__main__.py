import sys

from fastzsl.cli import main

sys.exit(main())
