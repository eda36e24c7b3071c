"""Evaluation entry point for `ray job submit`.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python pipelines/evaluate.py models:/raysl-simclr-resnet18@champion \
            [--data /data/labeled] [--protocol knn,linear,finetune] [--set eval.knn_k=20]

Same code path as `raysl evaluate` (raysl.evaluate.evaluate). Set MLFLOW_TRACKING_URI (or
--set tracking.tracking_uri=...) to the store that holds the model.
"""

import sys

from raysl.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
