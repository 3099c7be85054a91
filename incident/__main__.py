import sys

from incident.cli import main

sys.exit(main())
