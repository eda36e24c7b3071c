"""Pretraining entry point for `ray job submit`.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python pipelines/pretrain.py --config pipelines/configs/simclr_fmnist.yaml [--set k=v]

Under `ray job submit`, Ray sets RAY_ADDRESS, so the job joins the cluster it was submitted to
instead of starting its own. `--smoke-test` runs the whole path on tiny generated data.
Same code path as `raysl pretrain` (raysl.pretrain.pretrain).
"""

import sys

from raysl.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
