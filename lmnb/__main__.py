"""`python -m lmnb serve ...`"""
import sys

from lmnb.cli import main

sys.exit(main())
