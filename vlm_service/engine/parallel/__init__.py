"""Tensor parallelism over torch.distributed (NCCL on GPU, gloo on CPU): rank 0 is the server and drives the
scheduler and sampler; the workers run the same forward on their shard (models/parallel.py).

launch.py: start/stop the ranks, failure watchdog | group.py: process groups + the step channel |
step.py: a step as one message | runner.py: rank 0's runner and the worker loop | vision.py: data-parallel ViT |
worker.py: the worker process.
"""
