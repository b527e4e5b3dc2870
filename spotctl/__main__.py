"""`python -m spotctl ...`: the installed `spotctl` command, for an environment whose scripts are not on PATH."""

import sys

from spotctl.cli import main

sys.exit(main())
