import sys

from sentinel.cli.main import main

sys.exit(main())
