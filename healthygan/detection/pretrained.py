"""A released generator file, checked before a script uses it: present, read safely as a state
dict, of the architecture the script builds, and the expected bytes when a checksum is given.

``python -m healthygan.detection.pretrained PATH --g_conv_dim 64 --g_repeat_num 6
[--sha256 HEX]`` prints one line and exits 0, or prints one line saying what is wrong and exits 1.
"""
import argparse
import hashlib
import os
import sys

from healthygan.errors import CheckpointError
from healthygan.flags import positive_int
from healthygan.model.networks import Generator, count_parameters
from healthygan.training.checkpoints import load_state_dict_checked


def sha256_of(path):
    """The file's SHA-256, read in blocks (a generator is tens of MB)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def expected_sha256(text):
    """The hex digest in a checksum as typed: a bare SHA-256, or sha256sum's line (the digest,
    then the file name); a CheckpointError where it is no SHA-256."""
    fields = text.split()
    digest = fields[0].lower() if fields else ''
    if len(digest) != 64 or any(ch not in '0123456789abcdef' for ch in digest):
        raise CheckpointError(f'the expected checksum {text.strip()!r} is no SHA-256 (64 hex '
                              'digits, as sha256sum prints them): correct it')
    return digest


def check_generator_file(path, g_conv_dim=64, g_repeat_num=6, sha256=None):
    """Load path into the Generator these flags build (strict, weights_only), or raise one
    CheckpointError naming the file and the fix; returns the loaded Generator."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path} not found: put the generator there '
                              '(pretrained/README.md says where to get it)')
    if sha256:
        # Before loading: a partial download is then named as such, not as a broken pickle.
        expected = expected_sha256(sha256)
        found = sha256_of(path)
        if found != expected:
            raise CheckpointError(f'{path} has SHA-256 {found}, not the expected {expected}:'
                                  ' download it again (or correct the expected checksum)')
    G = Generator(g_conv_dim, 0, g_repeat_num)
    load_state_dict_checked(G, path, 'Generator')
    return G


def build_parser():
    p = argparse.ArgumentParser(
        prog='python -m healthygan.detection.pretrained',
        description='Check that a file is a generator state dict of the given architecture.')
    p.add_argument('path', help='the generator file, e.g. pretrained/covid/360000-G.ckpt')
    p.add_argument('--g_conv_dim', type=positive_int, default=64,
                   help='the architecture the file must fit (default: the original\'s)')
    p.add_argument('--g_repeat_num', type=positive_int, default=6,
                   help='residual blocks of the generator (default: the original\'s)')
    p.add_argument('--sha256', default=None, help='the expected SHA-256 of the file (hex)')
    return p


def main(argv=None):
    """Check the file; returns 0, or prints one line and returns 1."""
    args = build_parser().parse_args(argv)
    try:
        G = check_generator_file(args.path, args.g_conv_dim, args.g_repeat_num, args.sha256)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'{args.path}: a Generator state dict (--g_conv_dim {args.g_conv_dim} '
          f'--g_repeat_num {args.g_repeat_num}, {count_parameters(G):,} parameters)'
          + (', SHA-256 as expected' if args.sha256 else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
