"""Sweep entry point for `ray job submit`.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python pipelines/tune.py --sweep tuning/simclr_temperature.yaml [--set k=v]

Under `ray job submit`, Ray sets RAY_ADDRESS, so the sweep's trials run on the cluster it was
submitted to. Submitting the same command again resumes the sweep (finished trials are kept).
`--smoke-test` runs two tiny trials on generated data. Same code path as `raysl tune`.
"""

import sys

from raysl.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
