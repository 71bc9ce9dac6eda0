"""`python -m pyorthrus ...`: the same as the `pyorthrus` command."""
import sys

from .cli import main

sys.exit(main())
