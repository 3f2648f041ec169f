"""`python -m featurescope` runs the CLI."""

import sys

from featurescope.cli import main

sys.exit(main())
