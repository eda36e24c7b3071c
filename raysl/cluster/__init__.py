"""The cluster, as every command meets it.

Joining Ray (:mod:`~raysl.cluster.connect`), its nodes and their markers
(:mod:`~raysl.cluster.nodes`), and where checkpoints and runs are stored so that every node
reaches them (:mod:`~raysl.cluster.storage`). Training, evaluation, sweeps and the consumers'
commands all reach the cluster from here, never through one another.
"""
