"""``python -m healthygan MODE [flags]``: the healthygan command without its script."""
import sys

from healthygan.console import main

if __name__ == '__main__':  # guarded: tools that walk the package import this module too
    # The command as typed, for argparse's usage line and run_config.json's 'command' (python
    # puts this file's path here).
    sys.argv[0] = 'python -m healthygan'
    sys.exit(main())
