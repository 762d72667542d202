"""The repository root on sys.path, so that `python tools/x.py` run from a clone imports the
package and the top-level files as `python -m tools.x` and the tests do."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
