"""HealthyGAN command line: train, test (translation grids) and testAUC (anomaly scores, AUROC).

The parser and the program live in healthygan/cli.py (so that the package runs on its own);
this file is the original's entry point: ``python main.py --mode train ...``.
"""
from healthygan.cli import (build_parser, iters_or_latest, main, non_default_options,
                            positive_int, seed_everything, str2bool)

__all__ = ['build_parser', 'main', 'str2bool', 'iters_or_latest', 'positive_int',
           'seed_everything', 'non_default_options']

if __name__ == '__main__':
    main()
